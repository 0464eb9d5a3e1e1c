"""The on-disk format: Arrow IPC shards of tokenized documents, and the manifest.

A shard is an uncompressed Arrow IPC file with one record batch and one
column, `tokens`: a list of token ids per document. An Arrow list column is
one contiguous values buffer (all tokens of the shard, memory-mappable with
zero copies) plus an offsets buffer (where each document starts), which is
exactly what a reader that cuts fixed-length training sequences needs.
Compression would force a copy on read, so there is none.

Shards are named `{split}-{source}-{unit:05d}-{part:02d}.arrow` after the
input they come from, written under a temporary name and renamed when
complete. The manifest (`manifest.json`) is written last: a folder without
one is not a finished dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_pipeline.errors import DataError
from data_pipeline.layout import MANIFEST_NAME, shard_name, write_json_atomically
from data_pipeline.tokenizer import file_sha256

FORMAT_VERSION = 2
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 1 << 16 else pa.uint32()


def shard_schema(dtype: pa.DataType) -> pa.Schema:
    return pa.schema([("tokens", pa.list_(dtype))])


class ShardWriter:
    """Writes one split of one work unit as shards of about `target_bytes`."""

    def __init__(self, out_dir: Path, split: str, source: str, unit: int, dtype: pa.DataType, target_bytes: int):
        self.out_dir, self.split, self.source, self.unit = out_dir, split, source, unit
        self.dtype, self.target_bytes = dtype, target_bytes
        self.pending_tokens: list[np.ndarray] = []
        self.pending_lengths: list[np.ndarray] = []
        self.pending_bytes = 0
        self.records: list[dict] = []

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as their tokens end to end, and each one's length."""
        self.pending_tokens.append(tokens)
        self.pending_lengths.append(lengths)
        self.pending_bytes += tokens.nbytes
        # Arrow list offsets are 32-bit: a shard holds fewer than 2**31 tokens.
        if self.pending_bytes >= min(self.target_bytes, (2**31 - 1) * self.dtype.byte_width // 2):
            self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        if not self.pending_tokens:
            return
        lengths = np.concatenate(self.pending_lengths)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = pa.array(np.concatenate(self.pending_tokens), self.dtype)
        tokens = pa.ListArray.from_arrays(pa.array(offsets), values)
        schema = shard_schema(self.dtype)
        name = shard_name(self.split, self.source, self.unit, len(self.records))
        path = self.out_dir / name
        temporary = path.with_name(name + ".tmp")
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_batch(pa.record_batch([tokens], schema=schema))
        os.replace(temporary, path)  # a half-written shard never carries a shard's name
        self.records.append(
            {
                "file": name,
                "source": self.source,
                "split": self.split,
                "documents": len(lengths),
                "tokens": int(offsets[-1]),
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
        self.pending_tokens, self.pending_lengths, self.pending_bytes = [], [], 0


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    return write_json_atomically(out_dir / MANIFEST_NAME, manifest)


def tokens_column(path: Path) -> pa.ListArray:
    """A shard's `tokens` column, memory-mapped: its values and offsets are zero-copy views of the file."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path))).get_batch(0).column("tokens")
    except (pa.ArrowException, OSError, KeyError, IndexError) as err:
        raise DataError(f"{path}: not a readable shard ({err}); rebuild the dataset") from None


def verify_shard(data_dir: Path, shard: dict, vocab_size: int) -> None:
    """Check one shard against its manifest entry: checksum, structure, counts, and every token id in the vocabulary.

    Reads the whole file (hashing runs at about 1.4 GB/s a core); raises a
    DataError that names the file, and for a token id the document (its row).
    """
    path = Path(data_dir) / shard["file"]
    if file_sha256(path) != shard["sha256"]:
        raise DataError(
            f"{path}: its checksum differs from the manifest's: the shard was altered or damaged; "
            f"restore it or rebuild the dataset"
        )
    column = tokens_column(path)
    try:
        column.validate(full=True)
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: the shard's structure is broken ({err}); rebuild the dataset") from None
    values = column.values.to_numpy(zero_copy_only=True)
    if (len(column), len(values)) != (shard["documents"], shard["tokens"]):
        raise DataError(
            f"{path}: {len(column)} documents and {len(values)} tokens, the manifest says {shard['documents']} "
            f"and {shard['tokens']}; rebuild the dataset"
        )
    if len(values) and int(values.max()) >= vocab_size:
        position = int(np.argmax(values >= vocab_size))
        row = int(np.searchsorted(column.offsets.to_numpy(zero_copy_only=True), position, side="right")) - 1
        raise DataError(
            f"{path}: row {row} (a document) holds token id {int(values[position])}, outside the tokenizer's "
            f"vocabulary of {vocab_size}: the shard was not tokenized by this dataset's tokenizer; rebuild the dataset"
        )


def split_totals(shards: list[dict]) -> dict:
    return {
        split: {
            "shards": sum(1 for s in shards if s["split"] == split),
            "documents": sum(s["documents"] for s in shards if s["split"] == split),
            "tokens": sum(s["tokens"] for s in shards if s["split"] == split),
        }
        for split in SPLITS
    }


def core_manifest(shards: list[dict], tokenizer_info: dict, dtype: pa.DataType) -> dict:
    """What a reader needs: format, tokenizer, token type, shards, totals and the content fingerprint."""
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_info,
        "dtype": str(dtype),
        "shards": shards,
        "totals": split_totals(shards),
        "fingerprint": fingerprint(shards, tokenizer_info["sha256"]),
    }


def fingerprint(shards: list[dict], tokenizer_sha256: str) -> str:
    """Identifies the dataset's content: the same shards and tokenizer give the same value."""
    digest = hashlib.sha256(tokenizer_sha256.encode())
    for shard in shards:
        digest.update(f"{shard['file']}:{shard['sha256']}".encode())
    return digest.hexdigest()[:16]


def read_manifest(data_dir: str | Path) -> dict:
    """Read the manifest and check each shard it names: present, of the recorded size and schema."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{path}: no manifest; build the dataset first with `pretrain data build` "
            f"(or point data.output_dir at a built dataset)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); rebuild the dataset") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format version {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild the dataset"
        )
    expected = shard_schema(pa.type_for_alias(manifest["dtype"]))
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
        try:
            schema = pa.ipc.open_file(pa.memory_map(str(shard_path))).schema
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{shard_path}: not a readable Arrow file ({err}); rebuild the dataset") from err
        if not schema.equals(expected):
            raise DataError(
                f"{shard_path}: schema ({_describe(schema)}) is not ({_describe(expected)}); rebuild the dataset"
            )
    return manifest


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def verify_dataset(data_dir: str | Path) -> dict:
    """Everything `read_manifest` checks, plus every shard (`verify_shard`) and the tokenizer's checksum."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    for shard in manifest["shards"]:
        verify_shard(data_dir, shard, manifest["tokenizer"]["vocab_size"])
    tokenizer = manifest["tokenizer"]
    if file_sha256(data_dir / tokenizer["file"]) != tokenizer["sha256"]:
        raise DataError(
            f"{data_dir / tokenizer['file']}: checksum differs from the manifest; the file was altered, rebuild"
        )
    return manifest
