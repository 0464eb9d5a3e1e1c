"""C4's cleaning (Raffel et al., 2020, "Exploring the Limits of Transfer Learning", section 2.2).

Lines are dropped (no terminal punctuation, fewer than 3 words, a word over
1,000 characters, "javascript", cookie and policy notices; citation marks are
cut out), then the document is dropped when it has "lorem ipsum", a curly
brace, or fewer than 5 sentences in the lines that stay. The text written is
the kept lines. Thresholds are the paper's, as datatrove's C4QualityFilter.
"""

from __future__ import annotations

import re

from pydantic import Field

from data_pipeline.filters.base import RuleSettings
from data_pipeline.filters.text_stats import ELLIPSES, TERMINAL_PUNCTUATION

CHANGES_TEXT = True  # the kept lines are the text written
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# A sentence ends at terminal punctuation followed by a space or the end of the line.
SENTENCE_END = re.compile(r"[.!?…。！？]+[\"')\]]*(?=\s|$)")


class Settings(RuleSettings):
    min_sentences: int = Field(5, ge=0, description="fewest sentences in the kept lines")
    min_words_per_line: int = Field(3, ge=0, description="lines with fewer words are dropped")
    max_word_length: int = Field(1000, ge=1, description="lines with a longer word are dropped")
    terminal_punctuation: bool = Field(True, description="drop lines that do not end in terminal punctuation")
    drop_javascript_lines: bool = Field(True, description='drop lines that mention "javascript"')
    drop_policy_lines: bool = Field(True, description="drop cookie, privacy-policy and terms-of-use lines")
    remove_citations: bool = Field(True, description="cut Wikipedia citation marks such as [1] and [edit]")
    lorem_ipsum: bool = Field(True, description='drop documents with "lorem ipsum"')
    curly_braces: bool = Field(True, description='drop documents with a "{" (code, templates)')


def check(text: str, settings: Settings) -> tuple[str, str | None]:
    kept, sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        tokens = line.split()
        if any(len(token) > settings.max_word_length for token in tokens):
            continue
        if settings.remove_citations:
            line = CITATION.sub("", line)
        if settings.terminal_punctuation and (not line.endswith(TERMINAL_PUNCTUATION) or line.endswith(ELLIPSES)):
            continue
        if len(tokens) < settings.min_words_per_line:
            continue
        lower = line.lower()
        if settings.lorem_ipsum and "lorem ipsum" in lower:
            return text, "lorem_ipsum"
        if settings.drop_javascript_lines and "javascript" in lower:
            continue
        if settings.curly_braces and "{" in line:
            return text, "curly_braces"
        if settings.drop_policy_lines and any(phrase in lower for phrase in POLICY):
            continue
        sentences += max(1, len(SENTENCE_END.findall(line)))
        kept.append(line)
    if sentences < settings.min_sentences:
        return text, "min_sentences"
    return "\n".join(kept), None
