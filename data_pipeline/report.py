"""What the data commands print: the build's summary table, and `inspect`'s view of a dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from data_pipeline.layout import TOKENIZER_NAME
from data_pipeline.shards import tokens_column


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def build_summary(manifest: dict) -> str:
    """Per source: records read, rejected, filtered, duplicates, documents and tokens written; and the balance."""
    rows, balance = [], []
    for name, s in manifest["sources"].items():
        splits = s["splits"]
        rows.append(
            [
                name,
                s["files"],
                s["records"],
                sum(s["rejected"].values()),
                sum(s["filtered"].values()),
                s["duplicates"],
                s.get("near_duplicates", 0),
                s["documents_written"],
                splits["train"]["tokens"],
                splits["val"]["tokens"],
            ]
        )
        balance.append(
            f"{name}: {s['documents_in']:,} documents in = {s['documents_written']:,} written "
            f"+ {s['duplicates']:,} duplicates + {s.get('near_duplicates', 0):,} near-duplicates "
            f"+ {sum(s['filtered'].values()):,} filtered"
            + "".join(f" [{reason} {n:,}]" for reason, n in s["filtered"].items())
        )
    header = [
        "source",
        "files",
        "records",
        "rejected",
        "filtered",
        "dups",
        "near dups",
        "documents",
        "train tok",
        "val tok",
    ]
    rejected = ", ".join(f"{reason} {n:,}" for reason, n in manifest["rejected"].items()) or "none"
    totals = manifest["totals"]
    return "\n".join(
        [
            _table(header, rows),
            "",
            *balance,
            f"rejected records: {rejected}" + (" (each in rejects.jsonl)" if manifest["rejected"] else ""),
            f"shards: {totals['train']['shards']} train, {totals['val']['shards']} val ({manifest['dtype']} tokens); "
            f"{manifest['stats']['seconds']} s"
            + (" (resumed)" if manifest["stats"]["resumed"] else "")
            + (" (up to date: nothing was done)" if manifest.get("up_to_date") else ""),
        ]
    )


def inspect_dataset(data_dir: Path, manifest: dict, samples: int = 3, sample_chars: int = 200) -> str:
    """Totals, per-source counts, document-length and token-frequency summaries, and a few decoded samples."""
    tokenizer = Tokenizer.from_file(str(data_dir / TOKENIZER_NAME))
    lengths, frequencies, decoded = [], Counter(), []
    for shard in manifest["shards"]:
        column = tokens_column(data_dir / shard["file"])
        lengths.append(np.diff(column.offsets.to_numpy()))
        values = column.values.to_numpy()
        ids, counts = np.unique(values, return_counts=True)
        frequencies.update(dict(zip(ids.tolist(), counts.tolist())))
        if len(decoded) < samples and len(column):
            decoded.append((shard["file"], tokenizer.decode(column[0].values.to_numpy().tolist())))
    lengths = np.concatenate(lengths)
    total = sum(frequencies.values())
    percentiles = np.percentile(lengths, [50, 90, 99]).astype(int)
    lines = [
        f"dataset {data_dir}  fingerprint {manifest['fingerprint']}  format {manifest['format_version']}",
        f"tokenizer: {manifest['tokenizer']['vocab_size']:,} tokens, sha256 {manifest['tokenizer']['sha256'][:16]}…",
        "",
        build_summary(manifest),
        "",
        (
            f"document length (tokens): min {lengths.min():,}, median {percentiles[0]:,}, "
            f"p90 {percentiles[1]:,}, p99 {percentiles[2]:,}, max {lengths.max():,}, mean {lengths.mean():,.1f}"
        ),
        f"distinct tokens used: {len(frequencies):,} of {manifest['tokenizer']['vocab_size']:,}",
        "most frequent tokens: "
        + ", ".join(f"{tokenizer.decode([i])!r} {n / total:.1%}" for i, n in frequencies.most_common(10)),
        "",
    ]
    for name, text in decoded:
        lines.append(f"sample from {name}: {text[:sample_chars]!r}{'…' if len(text) > sample_chars else ''}")
    return "\n".join(lines)
