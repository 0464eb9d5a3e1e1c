"""What a worker does with one work unit, in the three passes of a build.

1. `scan_unit` (Ray tasks): read and clean every record, count rejects and
   filters, and return the content hash of each valid document.
2. `sample_unit` (Ray tasks, only when a tokenizer is trained): return the
   texts the driver chose for the tokenizer's training sample.
3. `TokenizeUnits` (a Ray Data actor pool: each actor loads the tokenizer
   once): read the unit again, keep the documents the corpus-wide
   deduplication kept, tokenize, and write the unit's shards and its
   completion marker. Reading, tokenizing and writing in one call moves no
   text between processes, and makes the unit the step a killed build
   resumes from.

Reading again costs little: parsing and cleaning run at tens of MB/s per
core, tokenizing at a few.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from data_pipeline.cleaning import HASH_BYTES, clean_text, content_hash, is_validation
from data_pipeline.config import DataConfig, SourceConfig
from data_pipeline.layout import WORK_DIR, write_json_atomically
from data_pipeline.readers import Reject, read_records
from data_pipeline.shards import ShardWriter, token_dtype
from data_pipeline.sources import WorkUnit
from data_pipeline.tokenizer import end_of_text_id, load_tokenizer

# Text per encode_batch call: large batches keep every core of the tokenizer's thread pool busy
# (measured: 2048 documents of ~8 KB encode ~15% faster than 512), and bound the memory.
ENCODE_CHARS = 8_000_000


def unit_marker(out_dir: Path, index: int) -> Path:
    return out_dir / WORK_DIR / f"unit-{index:05d}.json"


def _source(config: DataConfig, name: str) -> SourceConfig:
    return next(source for source in config.sources if source.name == name)


def unit_documents(unit: WorkUnit, config: DataConfig) -> Iterator[tuple[str, str, object]]:
    """("doc", text, hash), ("filtered", reason, None) or ("rejected", reason, (file, line, detail))."""
    source = _source(config, unit.source)
    for input_file in unit.files:
        for record in read_records(input_file, source.text_field, source.text_unit):
            if isinstance(record, Reject):
                yield "rejected", record.reason, (input_file.uri, record.line, record.detail)
                continue
            text, rule = clean_text(record, config.cleaning)
            if rule is not None:
                yield "filtered", rule, None
            else:
                yield "doc", text, content_hash(text)


def scan_unit(unit: WorkUnit, config: DataConfig) -> dict:
    """Counts, rejects and the content hashes of the unit's valid documents, in order."""
    hashes: list[bytes] = []
    rejected, filtered, rejects = Counter(), Counter(), []
    for kind, value, where in unit_documents(unit, config):
        if kind == "doc":
            hashes.append(where)
        elif kind == "filtered":
            filtered[value] += 1
        else:
            rejected[value] += 1
            rejects.append({"file": where[0], "line": where[1], "reason": value, "detail": where[2]})
    counts = {"rejected": dict(rejected), "filtered": dict(filtered), "valid": len(hashes)}
    return {"index": unit.index, "hashes": b"".join(hashes), "counts": counts, "rejects": rejects}


def sample_unit(unit: WorkUnit, config: DataConfig, wanted: np.ndarray) -> tuple[list[str], bytes]:
    """The texts and hashes of the unit's valid documents marked in `wanted`."""
    texts, hashes = [], []
    position = 0
    for kind, text, digest in unit_documents(unit, config):
        if kind != "doc":
            continue
        if wanted[position]:
            texts.append(text)
            hashes.append(digest)
        position += 1
    return texts, b"".join(hashes)


class TokenizeUnits:
    """A Ray Data callable class: tokenize and write whole units, one per call."""

    def __init__(self, config: dict, tokenizer_path: str, out_dir: str):
        self.config = DataConfig(**config)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.eot = end_of_text_id(self.tokenizer)
        self.dtype = token_dtype(self.tokenizer.get_vocab_size())
        self.out_dir = Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        markers = [self.write_unit(json.loads(u), bytes(k)) for u, k in zip(batch["unit"], batch["keep"])]
        return {"marker": [json.dumps(m) for m in markers]}

    def write_unit(self, unit_row: dict, keep_bits: bytes) -> dict:
        unit = WorkUnit.from_dict(unit_row)
        keep = np.unpackbits(np.frombuffer(keep_bits, dtype=np.uint8)).astype(bool)
        target = int(self.config.shard_size_mb * 1e6)
        writers = {
            split: ShardWriter(self.out_dir, split, unit.source, unit.number, self.dtype, target)
            for split in ("train", "val")
        }
        pending: dict[str, list[str]] = {"train": [], "val": []}
        pending_chars = {"train": 0, "val": 0}
        position = duplicates = 0
        for kind, text, digest in unit_documents(unit, self.config):
            if kind != "doc":
                continue
            position += 1
            if not keep[position - 1]:
                duplicates += 1
                continue
            split = "val" if is_validation(digest, self.config.val_fraction) else "train"
            pending[split].append(text)
            pending_chars[split] += len(text)
            if pending_chars[split] >= ENCODE_CHARS:
                self._encode_into(pending[split], writers[split])
                pending[split], pending_chars[split] = [], 0
        for split, texts in pending.items():
            self._encode_into(texts, writers[split])
            writers[split].close()
        marker = {
            "unit": unit.index,
            "source": unit.source,
            "duplicates": duplicates,
            "shards": [record for writer in writers.values() for record in writer.records],
        }
        write_json_atomically(unit_marker(self.out_dir, unit.index), marker)
        return marker

    def _encode_into(self, texts: list[str], writer: ShardWriter) -> None:
        if not texts:
            return
        ids = [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        # Every document ends with end-of-text, so packed sequences mark their boundaries.
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
        tokens = np.full(int(lengths.sum()), self.eot, dtype=self.dtype.to_pandas_dtype())
        is_text = np.ones(len(tokens), dtype=bool)
        is_text[np.cumsum(lengths) - 1] = False
        tokens[is_text] = np.fromiter(chain.from_iterable(ids), dtype=tokens.dtype, count=int(is_text.sum()))
        writer.add(tokens, lengths)


def dedup_keep_mask(hashes: bytes, deduplicate: bool) -> np.ndarray:
    """True for the first copy of each document, in plan order, across the whole corpus."""
    digests = np.frombuffer(hashes, dtype=f"V{HASH_BYTES}")
    keep = np.ones(len(digests), dtype=bool)
    if deduplicate and len(digests):
        keep[:] = False
        _, first = np.unique(digests, return_index=True)
        keep[first] = True
    return keep
