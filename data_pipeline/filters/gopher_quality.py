"""Gopher's quality rules (Rae et al., 2021, "Scaling Language Models", appendix A.1.1).

Thresholds are the paper's; datatrove's GopherQualityFilter uses the same.
As there, the word count and mean word length leave out words made only of
punctuation, and the other ratios count every word.
"""

from __future__ import annotations

import string

from pydantic import Field

from data_pipeline.filters.base import RuleSettings
from data_pipeline.filters.text_stats import ELLIPSES, lines, words

# Gopher's stop words: a document of real prose has at least two of them.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "●", "‣", "◦")


class Settings(RuleSettings):
    min_words: int = Field(50, ge=0, description="fewest words")
    max_words: int = Field(100_000, ge=1, description="most words")
    min_mean_word_length: float = Field(3, ge=0, description="shortest mean word length, in characters")
    max_mean_word_length: float = Field(10, ge=0, description="longest mean word length, in characters")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="most '#' or ellipses per word")
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1, description="largest share of lines starting with a bullet")
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1, description="largest share of lines ending in an ellipsis")
    min_alpha_words_ratio: float = Field(0.8, ge=0, le=1, description="smallest share of words with a letter")
    min_stop_words: int = Field(2, ge=0, description=f"fewest of the stop words {', '.join(sorted(STOP_WORDS))}")


def check(text: str, settings: Settings) -> tuple[str, str | None]:
    tokens = words(text)
    count = len(tokens)
    real = [token for token in tokens if token.strip(string.punctuation)]
    if len(real) < settings.min_words:
        return text, "min_words"
    if len(real) > settings.max_words:
        return text, "max_words"
    mean_length = sum(map(len, real)) / len(real) if real else 0.0
    if mean_length < settings.min_mean_word_length:
        return text, "min_mean_word_length"
    if mean_length > settings.max_mean_word_length:
        return text, "max_mean_word_length"
    if count and (text.count("#") + sum(text.count(e) for e in ELLIPSES)) / count > settings.max_symbol_word_ratio:
        return text, "max_symbol_word_ratio"
    text_lines = lines(text)
    if (
        sum(line.lstrip().startswith(BULLETS) for line in text_lines) / len(text_lines)
        > settings.max_bullet_lines_ratio
    ):
        return text, "max_bullet_lines_ratio"
    ellipsis_lines = sum(line.rstrip().endswith(ELLIPSES) for line in text_lines)
    if ellipsis_lines / len(text_lines) > settings.max_ellipsis_lines_ratio:
        return text, "max_ellipsis_lines_ratio"
    if count and sum(any(c.isalpha() for c in token) for token in tokens) / count < settings.min_alpha_words_ratio:
        return text, "min_alpha_words_ratio"
    if sum(token.lower() in STOP_WORDS for token in tokens) < settings.min_stop_words:
        return text, "min_stop_words"
    return text, None
