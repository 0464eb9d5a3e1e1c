"""Gopher's repetition rules (Rae et al., 2021, appendix A.1.1, table A1): text that says the same thing again.

Each fraction is of the document's characters (or of its lines and
paragraphs); thresholds are the paper's.
"""

from __future__ import annotations

from pydantic import Field

from data_pipeline.filters.base import RuleSettings
from data_pipeline.filters.text_stats import NGrams, lines, paragraphs, repeats, words


class Settings(RuleSettings):
    max_duplicate_lines: float = Field(0.3, ge=0, le=1, description="share of lines that repeat an earlier one")
    max_duplicate_paragraphs: float = Field(0.3, ge=0, le=1, description="share of paragraphs that repeat")
    max_duplicate_line_chars: float = Field(0.2, ge=0, le=1, description="share of characters in repeated lines")
    max_duplicate_paragraph_chars: float = Field(
        0.2, ge=0, le=1, description="share of characters in repeated paragraphs"
    )
    max_top_ngram_chars: dict[int, float] = Field(
        {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> largest share of characters in the most frequent word n-gram",
    )
    max_duplicate_ngram_chars: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> largest share of characters in repeated word n-grams",
    )


def check(text: str, settings: Settings) -> tuple[str, str | None]:
    size = len(text)
    for name, parts, most, most_chars in (
        ("paragraph", paragraphs(text), settings.max_duplicate_paragraphs, settings.max_duplicate_paragraph_chars),
        ("line", lines(text), settings.max_duplicate_lines, settings.max_duplicate_line_chars),
    ):
        count, chars = repeats(parts)
        if count / len(parts) > most:
            return text, f"max_duplicate_{name}s"
        if chars / size > most_chars:
            return text, f"max_duplicate_{name}_chars"
    grams = NGrams(words(text))
    for n, most in sorted(settings.max_top_ngram_chars.items()):
        if grams.top_chars(n) / size > most:
            return text, f"max_top_{n}gram_chars"
    for n, most in sorted(settings.max_duplicate_ngram_chars.items()):
        if grams.duplicate_chars(n) / size > most:
            return text, f"max_duplicate_{n}gram_chars"
    return text, None
