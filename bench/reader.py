"""Benchmark of the shard reader: sequences and tokens per second from page-cached shards, one core.

    python bench/reader.py --tokens 200e6 --seq-len 2048 --batch 32   # goal: >= 50 M tokens/s

Random access through the loader's global permutation (and, with --mixture,
through the weighted source mixing), as training reads them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_pipeline.loader import BatchLoader
from data_pipeline.shards import ShardWriter, core_manifest, write_manifest


def write_shards(out_dir: Path, tokens: int, shard_tokens: int = 32_000_000) -> None:
    rng = np.random.default_rng(0)
    shards = []
    for source in ("web", "code"):
        writer = ShardWriter(out_dir, "train", source, 0, pa.uint16(), shard_tokens * 2)
        remaining = tokens // 2
        while remaining > 0:
            lengths = rng.integers(50, 4000, size=10_000)
            flat = rng.integers(0, 50_000, size=int(lengths.sum()), dtype=np.uint16)
            writer.add(flat, lengths)
            remaining -= len(flat)
        writer.close()
        shards += writer.records
    tokenizer = {"file": "tokenizer.json", "sha256": "0" * 64, "vocab_size": 50_000}
    write_manifest(out_dir, core_manifest(shards, tokenizer, pa.uint16()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=float, default=200e6)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # one core
    with tempfile.TemporaryDirectory() as work:
        write_shards(Path(work), int(args.tokens))
        for mixture in (None, {"web": 0.7, "code": 0.3}):
            loader = BatchLoader(work, "train", args.seq_len, args.batch, 1, 0, 1, seed=0, mixture=mixture)
            for _ in range(5):  # page in the maps, warm the permutation
                loader.next_step()
            started = time.perf_counter()
            for _ in range(args.steps):
                loader.next_step()
            seconds = time.perf_counter() - started
            sequences = args.steps * args.batch
            print(
                f"mixture {mixture or 'none'}: {sequences / seconds:,.0f} sequences/s, "
                f"{sequences * args.seq_len / seconds / 1e6:.1f} M tokens/s "
                f"(seq_len {args.seq_len}, batch {args.batch}, {args.tokens / 1e6:.0f} M tokens in shards, 1 core)"
            )


if __name__ == "__main__":
    main()
