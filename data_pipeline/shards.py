"""The on-disk format: Arrow IPC shards of tokenized documents, and the manifest.

A shard is an uncompressed Arrow IPC file with one record batch whose
`tokens` column is a list of token ids per document. An Arrow list column
is one contiguous values buffer (all tokens of the shard, memory-mappable
with zero copies) plus an offsets buffer (where each document starts), which
is exactly what a reader that cuts fixed-length training sequences needs.

The manifest (`manifest.json`) is written last: a folder without one is
not a finished dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from data_pipeline.errors import DataError
from data_pipeline.tokenizer import file_sha256

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
SPLITS = ("train", "val")
# What a dataset folder holds, finished or half-written: a rebuild may replace these and nothing else.
DATASET_FILES = ("*.arrow", "*.arrow.tmp", MANIFEST_NAME, MANIFEST_NAME + ".tmp", TOKENIZER_NAME)


def token_dtype(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 1 << 16 else pa.uint32()


def shard_schema(dtype: pa.DataType) -> pa.Schema:
    return pa.schema([("tokens", pa.list_(dtype)), ("source", pa.string())])


@dataclass
class ShardRecord:
    file: str
    split: str
    documents: int
    tokens: int
    bytes: int
    sha256: str


class ShardWriter:
    """Collects tokenized documents of one split and writes them in shards of about `target_bytes`."""

    def __init__(self, out_dir: Path, split: str, dtype: pa.DataType, target_bytes: int):
        self.out_dir, self.split, self.target_bytes = out_dir, split, target_bytes
        self.schema = shard_schema(dtype)
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.records: list[ShardRecord] = []

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.pending.append(table.select(self.schema.names).cast(self.schema))
        self.pending_bytes += self.pending[-1].nbytes
        if self.pending_bytes >= self.target_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # One record batch per shard keeps all of its tokens in one buffer.
        batch = pa.concat_tables(self.pending).combine_chunks().to_batches()[0]
        path = self.out_dir / f"{self.split}-{len(self.records):05d}.arrow"
        temporary = path.with_suffix(".arrow.tmp")
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
            writer.write_batch(batch)
        os.replace(temporary, path)  # a half-written shard never carries a shard's name
        self.records.append(
            ShardRecord(
                file=path.name,
                split=self.split,
                documents=batch.num_rows,
                tokens=len(batch.column("tokens").values),
                bytes=path.stat().st_size,
                sha256=file_sha256(path),
            )
        )
        self.pending, self.pending_bytes = [], 0


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = out_dir / MANIFEST_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    return path


def build_manifest(
    records: list[ShardRecord], tokenizer_info: dict, dtype: pa.DataType, stats: dict, config: dict
) -> dict:
    shards = [asdict(r) for r in records]
    totals = {
        split: {
            "shards": sum(1 for r in records if r.split == split),
            "documents": sum(r.documents for r in records if r.split == split),
            "tokens": sum(r.tokens for r in records if r.split == split),
        }
        for split in SPLITS
    }
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_info,
        "dtype": str(dtype),
        "shards": shards,
        "totals": totals,
        "stats": stats,
        "fingerprint": fingerprint(shards, tokenizer_info["sha256"]),
        "config": config,
    }


def fingerprint(shards: list[dict], tokenizer_sha256: str) -> str:
    """Identifies the dataset's content: the same shards and tokenizer give the same value."""
    digest = hashlib.sha256(tokenizer_sha256.encode())
    for shard in shards:
        digest.update(f"{shard['file']}:{shard['sha256']}".encode())
    return digest.hexdigest()[:16]


def read_manifest(data_dir: str | Path) -> dict:
    """Read the manifest and check the files it names exist with the recorded sizes."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{path}: no manifest; build the dataset first with `pretrain data` "
            f"(or point data.output_dir at a built dataset)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format version {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild the dataset"
        )
    for shard in manifest["shards"]:
        shard_path = data_dir / shard["file"]
        if not shard_path.is_file():
            raise DataError(f"{shard_path}: shard named in the manifest is missing; rebuild the dataset")
        size = shard_path.stat().st_size
        if size != shard["bytes"]:
            raise DataError(
                f"{shard_path}: {size} bytes, the manifest says {shard['bytes']}; "
                f"the shard is truncated or altered, rebuild the dataset"
            )
    return manifest
