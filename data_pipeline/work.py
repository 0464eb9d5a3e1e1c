"""What a worker does with one work unit, in the passes of a build.

1. `scan_unit` (Ray tasks): read, clean and judge every record by the
   quality rules, count rejects and filters, and save for the dedup pass
   (dedup.py) the content hash of each valid document (and its MinHash
   signature), and the verdict on each record.
2. `smallest_kept_keys` and `sample_unit` (Ray tasks, only when a tokenizer
   is trained): the tokenizer's training sample, the kept documents with the
   smallest hashes.
3. `TokenizeUnits` (a Ray Data actor pool: each actor loads the tokenizer
   once): read the unit again, keep the documents the scan kept and the
   corpus-wide deduplication left, tokenize, and write the unit's shards and
   its completion marker. Reading, tokenizing and writing in one call moves
   no text between processes, and makes the unit the step a killed build
   resumes from.

Reading again costs little: parsing and cleaning run at tens of MB/s per
core, tokenizing at a few; the rules are not judged again (the scan's
verdicts are read back). Reading the next batch in a thread while the
tokenizer encodes was measured and dropped: the tokenizer already keeps
every core busy (50.3 s against 50.6 s for 200 MB), and the thread's own
allocations raised the actor's peak memory from 0.44 to 0.54 GiB.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from data_pipeline.cleaning import Cleaner, content_hash, is_validation
from data_pipeline.config import DataConfig, SourceConfig
from data_pipeline.dedup import hash_keys, load_array, minhasher, removed_in_unit, save_array, save_unit_keys
from data_pipeline.layout import WORK_DIR, write_json_atomically
from data_pipeline.readers import Reject, read_records
from data_pipeline.shards import ShardWriter, token_dtype
from data_pipeline.sources import WorkUnit
from data_pipeline.tokenizer import end_of_text_id, load_tokenizer

# Text per encode_batch call: large batches keep every core of the tokenizer's thread pool busy
# (measured: 2048 documents of ~8 KB encode ~15% faster than 512), and bound the memory.
ENCODE_CHARS = 8_000_000
SIGNATURE_BATCH = 256  # documents per MinHash call: amortises the call, bounds the memory
NEAR_EXAMPLES_PER_UNIT = 3
EXAMPLE_CHARS = 300  # of a filtered or near-duplicate document, kept for the messages and files that show it


def unit_marker(out_dir: Path, index: int) -> Path:
    return out_dir / WORK_DIR / f"unit-{index:05d}.json"


def _source(config: DataConfig, name: str) -> SourceConfig:
    return next(source for source in config.sources if source.name == name)


def unit_documents(
    unit: WorkUnit, config: DataConfig, kept_records: np.ndarray | None = None
) -> Iterator[tuple[str, str | None, object]]:
    """("doc", text, hash), ("filtered", reason, text) or ("rejected", reason, (file, line, detail)).

    With `kept_records` (the scan's verdict on every record, `load_kept_records`),
    the quality rules are not judged again: a record the scan filtered comes
    back as ("filtered", None, None), and a kept one is only cleaned.
    """
    source = _source(config, unit.source)
    clean = Cleaner(config.cleaning, judge=kept_records is None)
    index = -1
    for input_file in unit.files:
        for record in read_records(input_file, source.text_field, source.text_unit):
            index += 1
            if isinstance(record, Reject):
                yield "rejected", record.reason, (input_file.uri, record.line, record.detail)
                continue
            if kept_records is not None and not kept_records[index]:
                yield "filtered", None, None
                continue
            text, rule = clean(record)
            if rule is not None:
                yield "filtered", rule, text
            else:
                yield "doc", text, content_hash(text)


def _kept_records_path(out_dir: Path, unit: int) -> Path:
    return out_dir / WORK_DIR / f"records-{unit:05d}.npy"


def load_kept_records(out_dir: Path, unit: int) -> np.ndarray:
    """The scan's verdict on each record of the unit: True for a document that passed cleaning and the rules."""
    return np.unpackbits(load_array(_kept_records_path(out_dir, unit))).astype(bool)


def scan_unit(unit: WorkUnit, config: DataConfig, out_dir: Path, parts: int) -> dict:
    """Counts and rejects of the unit; its documents' keys are saved for deduplication (dedup.py)."""
    hashes: list[bytes] = []
    near = config.cleaning.near_dedup.enabled
    hasher, signatures, pending = (minhasher(config) if near else None), [], []
    rejected, filtered, rejects, examples = Counter(), Counter(), [], {}
    kept_records = []
    for kind, value, where in unit_documents(unit, config):
        kept_records.append(kind == "doc")
        if kind == "doc":
            hashes.append(where)
            if near:
                pending.append(value)
                if len(pending) == SIGNATURE_BATCH:
                    signatures.append(hasher.signatures(pending))
                    pending = []
        elif kind == "filtered":
            filtered[value] += 1
            examples.setdefault(value, where[:EXAMPLE_CHARS])
        else:
            rejected[value] += 1
            rejects.append({"file": where[0], "line": where[1], "reason": value, "detail": where[2]})
    if near:
        signatures = np.concatenate([*signatures, hasher.signatures(pending)])
    save_unit_keys(out_dir, unit.index, b"".join(hashes), signatures if near else None, config, parts)
    save_array(_kept_records_path(out_dir, unit.index), np.packbits(np.array(kept_records, dtype=bool)))
    counts = {"rejected": dict(rejected), "filtered": dict(filtered), "valid": len(hashes)}
    return {"index": unit.index, "counts": counts, "rejects": rejects, "filter_examples": examples}


def _near_examples(rows: np.ndarray, texts: dict[int, str]) -> list[dict]:
    """The near-duplicates among `texts` (by position), each with the order of the document it was removed for."""
    found = []
    for row in rows:
        position = int(row["order"]) & 0xFFFFFFFF
        if position in texts:
            similar = round(float(row["similarity"]), 3)
            found.append(
                {"position": position, "text": texts[position], "kept": int(row["kept"]), "similarity": similar}
            )
    return found


def kept_mask(unit: WorkUnit, valid: int, out_dir: Path, parts: int, config: DataConfig) -> np.ndarray:
    exact, near, _ = removed_in_unit(out_dir, unit.index, valid, parts, config)
    return ~(exact | near)


def smallest_kept_keys(unit: WorkUnit, valid: int, out_dir: Path, parts: int, config: DataConfig, n: int):
    """The `n` smallest hash keys (their first 8 bytes) of the unit's kept documents, sorted."""
    keys = hash_keys(out_dir, unit.index, valid)
    return np.sort(keys[kept_mask(unit, valid, out_dir, parts, config)])[:n]


def texts_at(unit: WorkUnit, config: DataConfig, out_dir: Path, positions: list[int]) -> dict[int, str]:
    """The texts of the unit's documents at these positions (among its valid documents)."""
    wanted, found = set(positions), {}
    position = 0
    for kind, text, _ in unit_documents(unit, config, load_kept_records(out_dir, unit.index)):
        if kind == "doc":
            if position in wanted:
                found[position] = text
            position += 1
    return found


def sample_unit(unit: WorkUnit, valid: int, out_dir: Path, parts: int, config: DataConfig, limit: int):
    """The texts and hashes of the unit's kept documents whose key is at most `limit`."""
    keep = kept_mask(unit, valid, out_dir, parts, config)
    texts, hashes = [], []
    position = 0
    for kind, text, digest in unit_documents(unit, config, load_kept_records(out_dir, unit.index)):
        if kind != "doc":
            continue
        if keep[position] and int.from_bytes(digest[:8], "big") <= limit:
            texts.append(text)
            hashes.append(digest)
        position += 1
    return texts, b"".join(hashes)


class TokenizeUnits:
    """A Ray Data callable class: tokenize and write whole units, one per call."""

    def __init__(self, config: dict, tokenizer_path: str, out_dir: str, parts: int):
        self.config = DataConfig(**config)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.eot = end_of_text_id(self.tokenizer)
        self.dtype = token_dtype(self.tokenizer.get_vocab_size())
        self.out_dir = Path(out_dir)
        self.parts = parts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        markers = [self.write_unit(json.loads(u), int(v)) for u, v in zip(batch["unit"], batch["valid"])]
        return {"marker": [json.dumps(m) for m in markers]}

    def write_unit(self, unit_row: dict, valid: int) -> dict:
        unit = WorkUnit.from_dict(unit_row)
        exact, near, near_rows = removed_in_unit(self.out_dir, unit.index, valid, self.parts, self.config)
        target = int(self.config.shard_size_mb * 1e6)
        writers = {
            split: ShardWriter(self.out_dir, split, unit.source, unit.number, self.dtype, target)
            for split in ("train", "val")
        }
        examples: dict[int, str] = {}  # position -> text of the first few near-duplicates, for near_duplicates.jsonl
        for split, texts in self._batches(unit, exact | near, near, examples):
            self._encode_into(texts, writers[split])
        for writer in writers.values():
            writer.close()
        marker = {
            "unit": unit.index,
            "source": unit.source,
            "duplicates": int(exact.sum()),
            "near_duplicates": int(near.sum()),
            "near_examples": _near_examples(near_rows, examples),
            "shards": [record for writer in writers.values() for record in writer.records],
        }
        write_json_atomically(unit_marker(self.out_dir, unit.index), marker)
        return marker

    def _batches(self, unit: WorkUnit, removed: np.ndarray, near: np.ndarray, examples: dict[int, str]):
        """(split, texts) of about ENCODE_CHARS each, of the unit's kept documents in order."""
        pending: dict[str, list[str]] = {"train": [], "val": []}
        pending_chars = {"train": 0, "val": 0}
        position = -1
        for kind, text, digest in unit_documents(unit, self.config, load_kept_records(self.out_dir, unit.index)):
            if kind != "doc":
                continue
            position += 1
            if removed[position]:
                if near[position] and len(examples) < NEAR_EXAMPLES_PER_UNIT:
                    examples[position] = text[:EXAMPLE_CHARS]
                continue
            split = "val" if is_validation(digest, self.config.val_fraction) else "train"
            pending[split].append(text)
            pending_chars[split] += len(text)
            if pending_chars[split] >= ENCODE_CHARS:
                yield split, pending[split]
                pending[split], pending_chars[split] = [], 0
        yield from pending.items()

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
