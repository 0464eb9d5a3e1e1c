"""Cleaning one document, and the content hash that deduplicates and splits it.

Every step is a pure function of the text, so the scan pass and the write
pass of a build (which read each file twice) agree on every document. The
quality rules (data_pipeline/filters/) run last, on the cleaned text.
"""

from __future__ import annotations

import hashlib
import unicodedata

from data_pipeline.config import CleaningConfig
from data_pipeline.filters import TEXT_CHANGING, active_rules, apply_rules

# Control characters other than tab and newline carry no text and confuse tokenizers.
_CONTROL = {c: None for c in range(32) if c not in (9, 10)} | {127: None}
HASH_BYTES = 16  # 128 bits: no accidental collision at any corpus size


class Cleaner:
    """`clean_text` with the config's quality rules looked up once, for every document of a unit.

    With `judge=False` only the rules that change the text run (C4 drops
    lines): for a pass that already knows which documents the rules keep.
    """

    def __init__(self, config: CleaningConfig, judge: bool = True):
        self.config = config
        self.rules = [rule for rule in active_rules(config.filters) if judge or rule[0] in TEXT_CHANGING]

    def __call__(self, text: str) -> tuple[str, str | None]:
        text, rule = clean_text(text, self.config)
        if rule is None and self.rules:
            text, rule = apply_rules(text, self.rules)
            if rule is None:  # a rule that cuts lines (C4) may leave too little
                rule = "empty" if not text else "too_short" if len(text) < self.config.min_chars else None
        return text, rule


def clean_text(text: str, config: CleaningConfig) -> tuple[str, str | None]:
    """The cleaned text, and the rule that filters it out (None when it is kept), before the quality rules."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a JSON escape) makes a whole tokenizer batch fail: replace it.
        text = text.encode("utf-8", "replace").decode("utf-8")
    if config.normalize_nfc:
        text = unicodedata.normalize("NFC", text)
    if config.remove_control_chars:
        text = text.translate(_CONTROL)
    text = text.strip()
    if not text:
        return text, "empty"
    if len(text) < config.min_chars:
        return text, "too_short"
    if len(text) > config.max_chars:
        return text, "too_long"
    return text, None


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=HASH_BYTES).digest()


def is_validation(digest: bytes, val_fraction: float) -> bool:
    """The split depends on the content alone, so a document never moves between splits."""
    return int.from_bytes(digest[:8], "big") < val_fraction * 2**64
