"""Counting helpers the quality rules share: words, lines, paragraphs, n-grams, repeats.

A word is a whitespace-separated token, as in the Gopher paper (Rae et al.,
2021, appendix A), so every rule reads the text the same way in any language
a whitespace split suits.

Word n-grams are counted as 64-bit keys made from word numbers (numpy), not
as joined strings: a 1,500-word page has 13,000 n-grams of 2 to 10 words,
and joining each costs more than the rest of the rules together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# Lines that end a sentence (C4 and FineWeb): a full stop, question or exclamation mark, or a closing quote.
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "…", "。", "！", "？")
ELLIPSES = ("...", "…")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit constant: n-gram keys are polynomials in word numbers


def words(text: str) -> list[str]:
    return text.split()


def paragraphs(text: str) -> list[str]:
    return _PARAGRAPH_BREAK.split(text.strip())


def lines(text: str) -> list[str]:
    return _LINE_BREAKS.split(text)


def repeats(items: Sequence[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters (Gopher's duplicate line and paragraph counts)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class NGrams:
    """The word n-grams of one text, for the repetition rules."""

    def __init__(self, tokens: Sequence[str]):
        numbers: dict[str, int] = {}
        self.ids = np.array([numbers.setdefault(t, len(numbers)) for t in tokens], dtype=np.uint64) + np.uint64(1)
        self.ends = np.concatenate([[0], np.cumsum([len(t) for t in tokens])])  # characters before each word

    def keys(self, n: int) -> np.ndarray:
        """One key per n-gram: equal n-grams have equal keys (and distinct ones, distinct keys but by a 2^-64 chance)."""
        count = len(self.ids) - n + 1
        if count <= 0:
            return np.zeros(0, dtype=np.uint64)
        keys = self.ids[:count].copy()
        with np.errstate(over="ignore"):
            for offset in range(1, n):
                keys = keys * _MIX + self.ids[offset : offset + count]
        return keys

    def chars(self, n: int, starts: np.ndarray) -> np.ndarray:
        """Letters of the n-grams starting at these words, spaces left out."""
        return self.ends[starts + n] - self.ends[starts]

    def top_chars(self, n: int) -> int:
        """Characters of the most frequent n-gram, joined by spaces, times its count; 0 when none repeats.

        Among n-grams equally frequent, the one seen first (as Counter.most_common).
        """
        keys = self.keys(n)
        if not len(keys):
            return 0
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        best = counts.max()
        if best < 2:
            return 0
        start = first[counts == best].min()
        return int(self.chars(n, np.array([start]))[0] + n - 1) * int(best)

    def duplicate_chars(self, n: int) -> int:
        """Letters in n-grams that repeat an earlier one, each word counted once (Gopher, table A1).

        Walks the words: a repeat is counted and its words skipped, so an
        overlapping repeat does not count them again; what was skipped is not
        remembered as seen. Sequential by definition, over integer keys.
        """
        keys = self.keys(n)
        if len(np.unique(keys)) == len(keys):  # nothing repeats: most pages, at a fraction of the walk's cost
            return 0
        sizes = self.chars(n, np.arange(len(keys))).tolist()
        keys = keys.tolist()
        seen: set[int] = set()
        chars = index = 0
        while index < len(keys):
            if keys[index] in seen:
                chars += sizes[index]
                index += n
            else:
                seen.add(keys[index])
                index += 1
        return chars
