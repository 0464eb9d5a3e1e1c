"""Byte-level BPE tokenizer: trained with `tokenizers` or loaded from a tokenizer.json.

Byte-level means every string is encodable (no unknown token): the base
alphabet is the 256 bytes, as in GPT-2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from data_pipeline.errors import DataError

END_OF_TEXT = "<|endoftext|>"
PADDING = "<|pad|>"
SPECIAL_TOKENS = [END_OF_TEXT, PADDING]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for bad files
        raise DataError(f"{path}: not a readable tokenizer.json ({err})") from err
    if tokenizer.token_to_id(END_OF_TEXT) is None:
        raise DataError(f"{path}: the tokenizer has no {END_OF_TEXT} token; add it as a special token")
    return tokenizer


def end_of_text_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(END_OF_TEXT)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
