"""Benchmark of the data build: throughput against the raw tokenizer, and memory as the corpus grows.

    python bench/data_build.py --mb 200            # throughput (goal: >= 0.8 of raw encode_batch)
    python bench/data_build.py --mb 50 --memory    # peak memory at 50 MB and 4x that (goal: within 1.5x)
    python bench/data_build.py --mb 50 --memory --near-dedup   # the same with near-dedup and the gopher rules
    python bench/data_build.py --mb 500 --fingerprint    # the up-to-date check by metadata and by content

Raw limit: `Tokenizer.encode_batch` over the same documents already in
memory (parsed before the clock starts), on the same cores, measured before
and after the build and averaged. The build runs
end to end (`pretrain data build` in a fresh process: Ray start, scan,
deduplication, tokenize, write, manifest) with the same tokenizer given as
`data.tokenizer.path`, so both sides do the same tokenizing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from corpus import write_corpus

from data_pipeline.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def read_texts(path: Path) -> list[str]:
    with open(path) as f:
        return [json.loads(line)["text"] for line in f]


def raw_limit(files: list[Path], tokenizer: Tokenizer, batch: int = 1024) -> tuple[int, float]:
    documents = [text for path in files for text in read_texts(path)]
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(documents), batch):
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch(documents[i : i + batch], add_special_tokens=False))
    return tokens, time.perf_counter() - started


def run_build(
    corpus: Path, tokenizer_path: Path, out_dir: Path, shard_mb: float, cleaning: dict | None = None
) -> tuple[dict, float, PeakMemory]:
    """Build in a fresh process; return the manifest, the wall time and the peak resident memory."""
    config = out_dir.parent / f"{out_dir.name}.yaml"
    data = {
        "sources": [{"name": "prose", "paths": [str(corpus)]}],
        "output_dir": str(out_dir),
        "shard_size_mb": shard_mb,
        "tokenizer": {"path": str(tokenizer_path)},
        **({"cleaning": cleaning} if cleaning else {}),
    }
    config.write_text(yaml.safe_dump({"data": data}))
    started = time.perf_counter()
    job = subprocess.Popen(
        [sys.executable, "-m", "pretrain.cli", "data", "build", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    peak = PeakMemory(job.pid)
    while job.poll() is None:
        peak.sample()
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    if job.returncode != 0:
        raise SystemExit(f"the build failed (exit code {job.returncode})")
    return json.loads((out_dir / "manifest.json").read_text()), elapsed, peak


class PeakMemory:
    """Peak resident memory of a process tree (the build, Ray's GCS, raylet and workers):
    of the root (the driver), of any one other process, and of all together."""

    def __init__(self, pid: int):
        self.pid, self.driver, self.worker, self.total = pid, 0, 0, 0

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for process in processes:
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            if process.pid == self.pid:
                self.driver = max(self.driver, rss)
            else:
                self.worker = max(self.worker, rss)
        self.total = max(self.total, total)

    def __str__(self) -> str:
        return (
            f"driver {self.driver / 2**30:.2f} GiB, largest other process {self.worker / 2**30:.2f} GiB, "
            f"all {self.total / 2**30:.2f} GiB"
        )


def throughput(work: Path, mb: float, shard_mb: float) -> None:
    files = write_corpus(work / "corpus", mb)
    size = sum(p.stat().st_size for p in files)
    tokenizer_path = work / "tokenizer.json"
    train_tokenizer(read_texts(files[0]), 8192).save(str(tokenizer_path))
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    # The raw limit is measured before and after the build and averaged: on a shared machine the
    # speed drifts, and a baseline taken only before (or after) can land in a slow or fast spell.
    raw_tokens, raw_before = raw_limit(files, tokenizer)
    manifest, seconds, peak = run_build(work / "corpus", tokenizer_path, work / "out", shard_mb)
    _, raw_after = raw_limit(files, tokenizer)
    raw_seconds = (raw_before + raw_after) / 2
    tokens = manifest["totals"]["train"]["tokens"] + manifest["totals"]["val"]["tokens"]
    documents = manifest["sources"]["prose"]["documents_written"]
    raw_rate, build_rate = raw_tokens / raw_seconds, (tokens - documents) / seconds  # build adds one EOT per document
    print(f"machine: {os.cpu_count()} cores; corpus {size / 1e6:.0f} MB in {len(files)} files, {documents:,} documents")
    print(
        f"raw encode_batch: {raw_tokens:,} tokens in {raw_seconds:.1f} s (before {raw_before:.1f} s, "
        f"after {raw_after:.1f} s) = {raw_rate / 1e6:.2f} M tokens/s"
    )
    print(f"pretrain data build: {tokens - documents:,} tokens in {seconds:.1f} s = {build_rate / 1e6:.2f} M tokens/s")
    print(f"ratio build / raw: {build_rate / raw_rate:.2f}; peak memory: {peak}")


def memory(work: Path, mb: float, shard_mb: float, cleaning: dict | None) -> None:
    tokenizer_path = work / "tokenizer.json"
    results = []
    for scale in (1, 4):
        files = write_corpus(work / f"corpus-{scale}", mb * scale)
        if scale == 1:
            train_tokenizer(read_texts(files[0]), 8192).save(str(tokenizer_path))
        out_dir = work / f"out-{scale}"
        manifest, seconds, peak = run_build(work / f"corpus-{scale}", tokenizer_path, out_dir, shard_mb, cleaning)
        tokens = manifest["totals"]["train"]["tokens"] + manifest["totals"]["val"]["tokens"]
        results.append(peak)
        print(f"corpus {mb * scale:.0f} MB: {tokens:,} tokens in {seconds:.1f} s; peak memory: {peak}")
    one, four = results
    print(
        f"peak memory 4x / 1x: driver {four.driver / one.driver:.2f}, largest other process "
        f"{four.worker / one.worker:.2f}, all {four.total / one.total:.2f}"
    )


def fingerprint(work: Path, mb: float, shard_mb: float) -> None:
    """The up-to-date check's time by metadata and by content, against reading the same bytes and nothing more.

    The corpus was just written, so it is read from the page cache: this is the hashing's cost, the disk's
    (or object store's) own speed comes on top.
    """
    from data_pipeline.config import DataConfig
    from data_pipeline.sources import filesystem, plan_fingerprint, plan_units

    files = write_corpus(work / "corpus", mb)
    size = sum(p.stat().st_size for p in files)

    def read_only() -> None:
        for path in files:
            fs, name = filesystem(str(path))
            with fs.open_input_stream(name, compression=None) as stream:
                while stream.read(1 << 24):
                    pass

    def plan(by: str) -> str:
        sources = [{"name": "prose", "paths": [str(work / "corpus")]}]
        config = DataConfig(sources=sources, shard_size_mb=shard_mb, inputs_changed_by=by)
        return plan_fingerprint(plan_units(config), config)

    seconds = {}
    checks = {
        "read the bytes only": read_only,
        "plan by metadata": lambda: plan("metadata"),
        "plan by content": lambda: plan("content"),
    }
    for name, check in checks.items():
        started = time.perf_counter()
        check()
        seconds[name] = time.perf_counter() - started
    print(f"machine: {os.cpu_count()} cores; corpus {size / 1e6:.0f} MB in {len(files)} files (page cache)")
    for name, taken in seconds.items():
        print(f"{name}: {taken:.2f} s = {size / taken / 1e9:.2f} GB/s")
    print(f"ratio content / read only: {seconds['plan by content'] / seconds['read the bytes only']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200, help="corpus size (the 1x size with --memory)")
    parser.add_argument("--shard-mb", type=float, default=32, help="data.shard_size_mb of the build")
    parser.add_argument("--memory", action="store_true", help="compare peak memory at 1x and 4x the corpus")
    parser.add_argument(
        "--near-dedup", action="store_true", help="with --memory: near-deduplication and the gopher rules on"
    )
    parser.add_argument(
        "--fingerprint", action="store_true", help="time the up-to-date check by metadata and by content"
    )
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        if args.fingerprint:
            fingerprint(work, args.mb, args.shard_mb)
        elif args.memory:
            cleaning = None
            if args.near_dedup:  # the bench corpus spaces punctuation out as words: Gopher's letters rule is off
                cleaning = {
                    "preset": "gopher",
                    "filters": {"gopher_quality": {"min_alpha_words_ratio": 0}},
                    "near_dedup": {"enabled": True},
                }
            memory(work, args.mb, args.shard_mb, cleaning)
        else:
            throughput(work, args.mb, args.shard_mb)


if __name__ == "__main__":
    main()
