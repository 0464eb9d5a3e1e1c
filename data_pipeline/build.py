"""The data build: raw corpus -> clean, deduplicated documents -> BPE tokenizer -> Arrow shards.

A Ray Data pipeline. On a laptop it runs on an in-process Ray; given
`ray_address` (or `RAY_ADDRESS`) the same code runs on a Ray cluster.

    files --read (one task per file)--> documents
          --clean (NFC, strip, minimum length, content hash, split)-->
          --deduplicate (whole corpus, by content hash)--> sorted by hash
          --train tokenizer on a deterministic sample-->
          --tokenize (actor pool: the tokenizer loads once per actor)-->
          --write shards + manifest (last)

Sorting by content hash gives every build the same document order whatever
the number of workers, and doubles as a shuffle of the corpus.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import unicodedata
from fnmatch import fnmatch
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import ray

from data_pipeline.config import DataConfig
from data_pipeline.corpus import expand_sources, file_documents, stdlib_docstrings, stdlib_files
from data_pipeline.errors import DataError
from data_pipeline.shards import (
    DATASET_FILES,
    TOKENIZER_NAME,
    ShardWriter,
    build_manifest,
    token_dtype,
    write_manifest,
)
from data_pipeline.tokenizer import end_of_text_id, file_sha256, load_tokenizer, train_tokenizer

# Control characters other than tab and newline carry no text and confuse tokenizers.
_CONTROL = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


def clean_batch(batch: dict[str, np.ndarray], min_chars: int, val_fraction: float) -> dict[str, np.ndarray]:
    """Normalize, drop short documents, and give each its content hash and split."""
    texts, sources, hashes, splits = [], [], [], []
    for text, source in zip(batch["text"], batch["source"]):
        # Lone surrogates make a whole tokenizer batch fail: replace them.
        text = text.encode("utf-8", "replace").decode("utf-8")
        text = unicodedata.normalize("NFC", text).translate(_CONTROL).strip()
        if len(text) < min_chars:
            continue
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        texts.append(text)
        sources.append(source)
        hashes.append(digest)
        # The split depends on the content alone, so a document never moves between splits.
        splits.append("val" if int(digest[:8], 16) / 0xFFFFFFFF < val_fraction else "train")
    return {"text": texts, "source": sources, "doc_hash": hashes, "split": splits}


def first_of_group(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep one copy of identical documents, and count the copies."""
    kept = {name: column[:1] for name, column in group.items()}
    kept["copies"] = np.array([len(group["doc_hash"])])
    return kept


class TokenizeBatch:
    """A Ray Data callable class: each actor parses the tokenizer once, then encodes batches."""

    def __init__(self, tokenizer_path: str, dtype: str):
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.eot = end_of_text_id(self.tokenizer)
        self.dtype = np.dtype(dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        encodings = self.tokenizer.encode_batch(batch.column("text").to_pylist(), add_special_tokens=False)
        # Every document ends with end-of-text, so packed sequences mark their boundaries.
        # Built as an Arrow list column directly: one values buffer plus offsets.
        offsets = np.zeros(len(encodings) + 1, dtype=np.int32)
        np.cumsum([len(e.ids) + 1 for e in encodings], out=offsets[1:])
        values = np.fromiter(
            chain.from_iterable(e.ids + [self.eot] for e in encodings), dtype=self.dtype, count=int(offsets[-1])
        )
        tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        return pa.table(
            {"tokens": tokens, "source": batch["source"], "split": batch["split"], "copies": batch["copies"]}
        )


def _cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _input_files(config: DataConfig) -> tuple[list[str], Callable[[str], Iterator[dict]]]:
    """The files to read and the function that turns one into documents."""
    if config.sources:
        return expand_sources(config.sources), partial(file_documents, text_field=config.text_field)
    return stdlib_files(), stdlib_docstrings


def _documents(files: list[str], reader: Callable[[str], Iterator[dict]], config: DataConfig) -> ray.data.Dataset:
    """Clean documents, one copy of each, sorted by content hash."""
    # A few files per task: enough tasks to keep every CPU busy, few enough to not drown in scheduling.
    blocks = min(len(files), 8 * _cluster_cpus())
    items = ray.data.from_items([{"path": path} for path in files], override_num_blocks=blocks)
    cleaned = items.flat_map(lambda row: list(reader(row["path"]))).map_batches(
        clean_batch, fn_kwargs={"min_chars": config.min_chars, "val_fraction": config.val_fraction}
    )
    partitions = 2 * _cluster_cpus()
    return cleaned.groupby("doc_hash", num_partitions=partitions).map_groups(first_of_group).sort("doc_hash")


def _tokenizer(config: DataConfig, documents: ray.data.Dataset, out_dir: Path) -> Path:
    path = out_dir / TOKENIZER_NAME
    if config.tokenizer.path:
        shutil.copyfile(config.tokenizer.path, path)
        load_tokenizer(path)
        return path
    # The documents are sorted by content hash, so the first N are a
    # deterministic, unbiased sample.
    sample = documents.limit(config.tokenizer.sample_documents).take_all()
    if not sample:
        raise DataError("data.sources: no document is left after cleaning; check the sources and data.min_chars")
    train_tokenizer((row["text"] for row in sample), config.tokenizer.vocab_size).save(str(path))
    return path


def _write_shards(tokenized: ray.data.Dataset, out_dir: Path, dtype: pa.DataType, config: DataConfig):
    """Write both splits in document order; return their shard records and the documents seen before dedup."""
    target = int(config.shard_size_mb * 1e6)
    writers = {split: ShardWriter(out_dir, split, dtype, target) for split in ("train", "val")}
    documents_before_dedup = 0
    for batch in tokenized.iter_batches(batch_format="pyarrow", batch_size=None):
        documents_before_dedup += pa.compute.sum(batch["copies"]).as_py() or 0
        for split, writer in writers.items():
            writer.add(batch.filter(pa.compute.equal(batch["split"], split)))
    for writer in writers.values():
        writer.flush()
    if not writers["val"].records:
        raise DataError("data.val_fraction: the validation split is empty; raise data.val_fraction or add data")
    return writers["train"].records + writers["val"].records, documents_before_dedup


def _start_ray(ray_address: str | None) -> None:
    ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    # A DataError raised while reading (a bad input line) reaches the caller as itself.
    context.raise_original_map_exception = True
    # Task-based sort shuffles start in milliseconds; actor-based hash shuffles
    # spend tens of seconds starting aggregators, which dominates small builds.
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def _fresh_output_dir(out_dir: Path) -> Path:
    """An empty output folder. A previous build is replaced; a folder holding anything else is left alone."""
    if out_dir.exists():
        foreign = [p.name for p in out_dir.iterdir() if not _matches_any(p.name, DATASET_FILES)]
        if foreign:
            raise DataError(
                f"data.output_dir: {out_dir} holds files that are not a dataset's ({', '.join(sorted(foreign)[:5])}); "
                f"choose an empty or new folder"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def _matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch(name, pattern) for pattern in patterns)


def build_dataset(config: DataConfig, resolved_config: dict, ray_address: str | None = None) -> dict:
    """Build shards and manifest in `config.output_dir`; return the manifest."""
    started = time.time()
    # Bad inputs fail here, before any work.
    if config.tokenizer.path and not Path(config.tokenizer.path).is_file():
        raise DataError(f"data.tokenizer.path: {config.tokenizer.path} does not exist; give a tokenizer.json or null")
    files, reader = _input_files(config)
    out_dir = _fresh_output_dir(Path(config.output_dir))
    _start_ray(ray_address)
    try:
        documents = _documents(files, reader, config).materialize()
        tokenizer_path = _tokenizer(config, documents, out_dir)
        tokenizer = load_tokenizer(tokenizer_path)
        dtype = token_dtype(tokenizer.get_vocab_size())
        tokenized = documents.map_batches(
            TokenizeBatch,
            fn_constructor_kwargs={"tokenizer_path": str(tokenizer_path), "dtype": str(dtype)},
            # Leave a CPU for reading and writing: a pool that takes them all starves the pipeline.
            concurrency=max(1, _cluster_cpus() - 1),
            batch_size=256,
            batch_format="pyarrow",
        )
        records, documents_before_dedup = _write_shards(tokenized, out_dir, dtype, config)
        stats = {
            "documents_after_cleaning": documents_before_dedup,
            "documents_after_dedup": documents.count(),
            "seconds": round(time.time() - started, 1),
        }
    finally:
        ray.shutdown()
    tokenizer_info = {
        "file": TOKENIZER_NAME,
        "sha256": file_sha256(tokenizer_path),
        "vocab_size": tokenizer.get_vocab_size(),
        "eot_id": end_of_text_id(tokenizer),
    }
    manifest = build_manifest(records, tokenizer_info, dtype, stats, resolved_config)
    write_manifest(out_dir, manifest)
    return manifest
