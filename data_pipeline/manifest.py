"""Assembling the manifest of a finished build: shards, totals, per-source counts and their balance."""

from __future__ import annotations

import json
import platform
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from tokenizers import Tokenizer

from data_pipeline.errors import DataError
from data_pipeline.layout import NEAR_DUPLICATES_NAME, REJECTS_NAME, TOKENIZER_NAME, write_atomically
from data_pipeline.shards import core_manifest, split_totals, token_dtype
from data_pipeline.sources import WorkUnit
from data_pipeline.tokenizer import END_OF_TEXT, PADDING, file_sha256


def _source_counts(units: list[WorkUnit], scans: list[dict], markers: list[dict]) -> dict[str, dict]:
    counts: dict[str, dict] = {}
    for unit, scan, marker in zip(units, scans, markers):
        entry = counts.setdefault(
            unit.source,
            {
                "files": set(),
                "rejected": Counter(),
                "filtered": Counter(),
                "valid": 0,
                "duplicates": 0,
                "near_duplicates": 0,
                "shards": [],
            },
        )
        entry["files"] |= {input_file.uri for input_file in unit.files}  # a large file is cut into several units
        entry["rejected"].update(scan["counts"]["rejected"])
        entry["filtered"].update(scan["counts"]["filtered"])
        entry["valid"] += scan["counts"]["valid"]
        entry["duplicates"] += marker["duplicates"]
        entry["near_duplicates"] += marker.get("near_duplicates", 0)
        entry["shards"] += marker["shards"]
    return {name: _summarize(entry) for name, entry in counts.items()}


def _summarize(entry: dict) -> dict:
    """One source's counts, with the balance every document must satisfy."""
    totals = split_totals(entry["shards"])
    filtered, rejected = sum(entry["filtered"].values()), sum(entry["rejected"].values())
    documents_in = entry["valid"] + filtered
    written = totals["train"]["documents"] + totals["val"]["documents"]
    removed = entry["duplicates"] + entry["near_duplicates"]
    if documents_in != written + removed + filtered:
        raise DataError(
            f"internal error: {documents_in} documents read, but {written} written + {entry['duplicates']} "
            f"duplicates + {entry['near_duplicates']} near-duplicates + {filtered} filtered; please report this"
        )
    return {
        "files": len(entry["files"]),
        "records": documents_in + rejected,
        "rejected": dict(sorted(entry["rejected"].items())),
        "documents_in": documents_in,
        "filtered": dict(sorted(entry["filtered"].items())),
        "duplicates": entry["duplicates"],
        "near_duplicates": entry["near_duplicates"],
        "documents_written": written,
        "splits": totals,
    }


def refuse_an_empty_validation_split(shards: list[dict], val_fraction: float) -> None:
    if any(s["split"] == "val" for s in shards):
        return
    written = sum(s["documents"] for s in shards)
    raise DataError(
        f"data.val_fraction: the validation split is empty: {written} document(s) were written, and a document "
        f"goes to validation when its content hash falls in the first {val_fraction:g} of all hashes, so about "
        f"{written * val_fraction:.2g} of them were expected there; add documents, raise data.val_fraction, or "
        f"cut text files into more documents (text_unit: line or paragraph)"
    )


def assemble_manifest(
    units: list[WorkUnit],
    scans: list[dict],
    markers: list[dict],
    tokenizer: Tokenizer,
    tokenizer_path: Path,
    stats: dict,
    val_fraction: float,
) -> dict:
    shards = [shard for marker in markers for shard in marker["shards"]]
    refuse_an_empty_validation_split(shards, val_fraction)
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


def write_near_duplicates(out_dir: Path, pairs: list[dict]) -> Path:
    """A sample of removed near-duplicates, each beside the document kept for it, for a person to judge."""
    path = out_dir / NEAR_DUPLICATES_NAME
    write_atomically(path, "".join(json.dumps(pair) + "\n" for pair in pairs))
    return path


def write_rejects(out_dir: Path, rejects_per_unit: list[list[dict]]) -> Path:
    """Every rejected record, with its file, line and reason, in input order."""
    path = out_dir / REJECTS_NAME
    with open(path, "w") as f:
        for rejects in rejects_per_unit:
            f.writelines(json.dumps(reject) + "\n" for reject in rejects)
    return path
