"""FineWeb's own quality rules (Penedo et al., 2024, "The FineWeb Datasets", section 3.3 and appendix).

Added to Gopher's and C4's after ablations on the remaining web text: too few
lines ending in punctuation, too many short lines (menus, lists), repeated
lines' characters, and too many line breaks per word. Thresholds are the
paper's, as datatrove's FineWebQualityFilter.
"""

from __future__ import annotations

from pydantic import Field

from data_pipeline.filters.base import RuleSettings
from data_pipeline.filters.text_stats import TERMINAL_PUNCTUATION, repeats, words


class Settings(RuleSettings):
    min_line_punctuation_ratio: float = Field(
        0.12, ge=0, le=1, description="smallest share of lines ending in terminal punctuation"
    )
    max_short_line_ratio: float = Field(0.67, ge=0, le=1, description="largest share of short lines")
    short_line_chars: int = Field(30, ge=1, description="a line of at most this many characters is short")
    max_duplicate_line_chars: float = Field(
        0.01, ge=0, le=1, description="largest share of characters in lines that repeat an earlier line"
    )
    max_newlines_per_word: float = Field(0.3, ge=0, description="most line breaks per word (lists)")


def check(text: str, settings: Settings) -> tuple[str, str | None]:
    text_lines = [line for line in text.split("\n") if line.strip()]
    if not text_lines:
        return text, "min_line_punctuation_ratio"
    ending = sum(line.endswith(TERMINAL_PUNCTUATION) for line in text_lines)
    if ending / len(text_lines) < settings.min_line_punctuation_ratio:
        return text, "min_line_punctuation_ratio"
    short = sum(len(line) <= settings.short_line_chars for line in text_lines)
    if short / len(text_lines) > settings.max_short_line_ratio:
        return text, "max_short_line_ratio"
    if repeats(text_lines)[1] / max(1, len(text.replace("\n", ""))) > settings.max_duplicate_line_chars:
        return text, "max_duplicate_line_chars"
    if text.count("\n") / max(1, len(words(text))) > settings.max_newlines_per_word:
        return text, "max_newlines_per_word"
    return text, None
