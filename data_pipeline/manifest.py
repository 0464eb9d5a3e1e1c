"""Assembling the manifest of a finished build: shards, totals, per-source counts and their balance."""

from __future__ import annotations

import json
import platform
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from tokenizers import Tokenizer

from data_pipeline.errors import DataError
from data_pipeline.layout import REJECTS_NAME, TOKENIZER_NAME
from data_pipeline.shards import core_manifest, split_totals, token_dtype
from data_pipeline.sources import WorkUnit
from data_pipeline.tokenizer import END_OF_TEXT, PADDING, file_sha256


def _source_counts(units: list[WorkUnit], scans: list[dict], markers: list[dict]) -> dict[str, dict]:
    counts: dict[str, dict] = {}
    for unit, scan, marker in zip(units, scans, markers):
        entry = counts.setdefault(
            unit.source,
            {"files": 0, "rejected": Counter(), "filtered": Counter(), "valid": 0, "duplicates": 0, "shards": []},
        )
        entry["files"] += len(unit.files)
        entry["rejected"].update(scan["counts"]["rejected"])
        entry["filtered"].update(scan["counts"]["filtered"])
        entry["valid"] += scan["counts"]["valid"]
        entry["duplicates"] += marker["duplicates"]
        entry["shards"] += marker["shards"]
    return {name: _summarize(entry) for name, entry in counts.items()}


def _summarize(entry: dict) -> dict:
    """One source's counts, with the balance every document must satisfy."""
    totals = split_totals(entry["shards"])
    filtered, rejected = sum(entry["filtered"].values()), sum(entry["rejected"].values())
    documents_in = entry["valid"] + filtered
    written = totals["train"]["documents"] + totals["val"]["documents"]
    if documents_in != written + entry["duplicates"] + filtered:
        raise DataError(
            f"internal error: {documents_in} documents read, but {written} written + {entry['duplicates']} "
            f"duplicates + {filtered} filtered; please report this"
        )
    return {
        "files": entry["files"],
        "records": documents_in + rejected,
        "rejected": dict(sorted(entry["rejected"].items())),
        "documents_in": documents_in,
        "filtered": dict(sorted(entry["filtered"].items())),
        "duplicates": entry["duplicates"],
        "documents_written": written,
        "splits": totals,
    }


def assemble_manifest(
    units: list[WorkUnit], scans: list[dict], markers: list[dict], tokenizer: Tokenizer, tokenizer_path: Path, stats
) -> dict:
    shards = [shard for marker in markers for shard in marker["shards"]]
    if not any(s["split"] == "val" for s in shards):
        raise DataError("data.val_fraction: the validation split is empty; raise data.val_fraction or add data")
    sources = _source_counts(units, scans, markers)
    tokenizer_info = {
        "file": TOKENIZER_NAME,
        "sha256": file_sha256(tokenizer_path),
        "vocab_size": tokenizer.get_vocab_size(),
        "eot_id": tokenizer.token_to_id(END_OF_TEXT),
        "pad_id": tokenizer.token_to_id(PADDING),
    }
    return {
        **core_manifest(shards, tokenizer_info, token_dtype(tokenizer.get_vocab_size())),
        "sources": sources,
        "rejected": dict(sum((Counter(s["rejected"]) for s in sources.values()), Counter())),
        "stats": stats,
        "versions": {
            "python": platform.python_version(),
            **{name: version(name) for name in ("pyarrow", "tokenizers", "ray", "numpy", "pretrain")},
        },
    }


def write_rejects(out_dir: Path, rejects_per_unit: list[list[dict]]) -> Path:
    """Every rejected record, with its file, line and reason, in input order."""
    path = out_dir / REJECTS_NAME
    with open(path, "w") as f:
        for rejects in rejects_per_unit:
            f.writelines(json.dumps(reject) + "\n" for reject in rejects)
    return path
