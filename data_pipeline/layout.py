"""A dataset folder's contract, and the one atomic writer of the project.

    <data.output_dir>/
      .lock                  held by the build writing the folder (data_pipeline/locks.py)
      manifest.json          written last: a folder without one is not a finished dataset
      tokenizer.json         the byte-level BPE the shards were encoded with
      rejects.jsonl          documents the cleaning dropped, and why
      near_duplicates.jsonl  a sample of removed near-duplicates beside the documents kept (near_dedup)
      {split}-{source}-{unit:05d}-{part:02d}.arrow    the shards (data_pipeline/shards.py)
      _build/                plan.json, scan, dedup and unit files of an unfinished build

Every small file of the project (manifests, markers, run records, job
records) is written by `write_atomically`: `pretrain/layout.py` re-exports it
with the run folder's names, and `launch/` imports it from here. It lives in
the lowest package that writes folders, since `data_pipeline/` may import
neither `pretrain/` nor `launch/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOCK_NAME = ".lock"
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
REJECTS_NAME = "rejects.jsonl"
NEAR_DUPLICATES_NAME = "near_duplicates.jsonl"
WORK_DIR = "_build"
PLAN_NAME = "plan.json"
# What a dataset folder holds, finished or half-written: a rebuild may replace these and nothing else.
DATASET_FILES = ("*.arrow", "*.json", "*.tmp", REJECTS_NAME, NEAR_DUPLICATES_NAME, WORK_DIR)


def shard_name(split: str, source: str, unit: int, part: int) -> str:
    return f"{split}-{source}-{unit:05d}-{part:02d}.arrow"


def write_atomically(path: Path, data: str | bytes) -> Path:
    """Write under a temporary name, flush it to disk, then rename: a reader never sees half a file.

    The temporary name carries the process id, since several processes may
    write the same file (each host of a multi-node job writes its config).
    """
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return path


def write_json_atomically(path: Path, payload: dict) -> Path:
    return write_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
