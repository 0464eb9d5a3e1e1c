"""Counting helpers the quality rules share: words, lines, paragraphs, n-grams, repeats.

A word is a whitespace-separated token, as in the Gopher paper (Rae et al.,
2021, appendix A), so every rule reads the text the same way in any language
a whitespace split suits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# Lines that end a sentence (C4 and FineWeb): a full stop, question or exclamation mark, or a closing quote.
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "…", "。", "！", "？")
ELLIPSES = ("...", "…")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")


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


def top_ngram_chars(tokens: Sequence[str], n: int) -> int:
    """Characters covered by the most frequent word n-gram, counting each occurrence; 0 when none repeats."""
    grams = Counter(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count if count > 1 else 0


def duplicate_ngram_chars(tokens: Sequence[str], n: int) -> int:
    """Characters in word n-grams that repeat an earlier n-gram, each word counted once (Gopher, table A1)."""
    seen: set[str] = set()
    chars = index = 0
    while index < len(tokens) - n + 1:
        gram = "".join(tokens[index : index + n])
        if gram in seen:
            chars += len(gram)
            index += n  # the words of a repeat are not counted again by an overlapping one
        else:
            seen.add(gram)
            index += 1
    return chars
