"""What verifying costs: checksums on every checkpoint save, and shards checked before training reads them.

    .venv/bin/python bench/checksums.py                      # 24m model, 512 MB of shards, 5 repeats
    .venv/bin/python bench/checksums.py --model gpt2-small --shard-mb 2048 --repeats 3

Checkpoints, in one process (gloo, world of 1), on the engine `pretrain
train` builds (`build_engine`, ZeRO 1, fp32) after one training step, so
Adam's state exists. Each repeat saves the same state twice, alternating
the order, each save after a `sync` (so neither waits on the other's dirty
pages): DeepSpeed's own checkpoint engine (`TorchCheckpointEngine`,
`engine.save_checkpoint`, no checksums: the baseline) and
`pretrain.weights.checkpoint.save` (the trainer's engine, which hashes each file
with XXH3-128 as it writes it, gathers the checksums and writes the
marker). Then, on the saved folder with its files in the page cache:
`checkpoint_files.verify` (what export and generate run before loading; a
resume shares the same work among its ranks), and the hashing alone with
XXH3-128 and with sha256, the two candidates the issue asked to measure.

Shards: `--shard-mb` of uint16 tokens written as shards of 8 MB by the
build's own `ShardWriter`, then, files in the page cache: reading every
shard (the baseline), and `verify_shard` on every shard (sha256, Arrow's
full validation, counts, token ids against the vocabulary): what a job
spends before training, divided among its ranks.

Times are medians of `--repeats`; MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import deepspeed
import numpy as np
import pyarrow as pa
import torch
import xxhash
from checkpoint_io import MODELS, trained_engine  # bench/, the script's folder, is on sys.path
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from train_speed import single_process_environment

from data_pipeline.shards import ShardWriter, verify_shard
from pretrain.config import load_config
from pretrain.train.engine import init_distributed
from pretrain.weights import checkpoint, checkpoint_folder
from pretrain.weights.checkpoint_engine import VerifiedCheckpointEngine
from pretrain.weights.checkpoint_files import verify

CHUNK = 8 << 20
SHARD_BYTES = 8_000_000
VOCAB = 50_304


def seconds(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def read_all(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(CHUNK):
                pass


def hash_all(paths: list[Path], new) -> None:
    for path in paths:
        digest = new()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)


def checkpoint_figures(args: argparse.Namespace, folder: Path) -> dict:
    overrides = [*MODELS[args.model], "parallel.zero_stage=1", "launch.nproc_per_node=1", "train.micro_batch_size=1"]
    overrides.append("train.global_batch_size=1")
    config = load_config(args.config, [*overrides, "train.seq_len=64", "lr_schedule.warmup_steps=1"])
    engine = trained_engine(config)
    client_state = {"step": 1, "tokens_seen": 64}
    stock_engine = TorchCheckpointEngine(engine._config)
    times = {"stock": [], "verified": [], "verify": [], "xxh3_128": [], "sha256": []}
    for repeat in range(args.repeats):
        run_dir = folder / f"repeat_{repeat}"
        stock_dir = run_dir / "stock"

        def stock(run_dir=run_dir, stock_dir=stock_dir) -> None:
            engine.checkpoint_engine = stock_engine
            engine.save_checkpoint(str(stock_dir), tag="step_00000001", client_state=client_state, save_latest=False)
            engine.checkpoint_engine = VerifiedCheckpointEngine()

        def verified(run_dir=run_dir) -> None:
            checkpoint.save(engine, run_dir, 1, client_state, {"step": 1}, keep_last=1)

        for name, call in (("stock", stock), ("verified", verified))[:: 1 if repeat % 2 else -1]:
            os.sync()  # each save starts with no dirty pages of the one before to wait on
            times[name].append(seconds(call))
        saved = checkpoint_folder.checkpoint_dir(run_dir) / "step_00000001"
        files = sorted(saved.glob("*.pt"))
        times["verify"].append(seconds(verify, saved))
        times["xxh3_128"].append(seconds(hash_all, files, xxhash.xxh3_128))
        times["sha256"].append(seconds(hash_all, files, hashlib.sha256))
        size = sum(path.stat().st_size for path in files)
        shutil.rmtree(run_dir)
    parameters = sum(p.numel() for p in engine.module.parameters())
    return {"parameters": parameters, "bytes": size, **{key: statistics.median(v) for key, v in times.items()}}


def shard_figures(args: argparse.Namespace, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    folder.mkdir()
    writer = ShardWriter(folder, "train", "bench", 0, pa.uint16(), SHARD_BYTES)
    tokens_left = args.shard_mb * 1_000_000 // 2
    while tokens_left > 0:
        lengths = rng.integers(200, 4000, size=256)
        tokens = rng.integers(0, VOCAB, size=int(lengths.sum()), dtype=np.uint16)
        writer.add(tokens, lengths)
        tokens_left -= len(tokens)
    writer.close()
    paths = [folder / record["file"] for record in writer.records]
    read_all(paths)  # into the page cache
    reads, verifies = [], []
    for _ in range(args.repeats):
        reads.append(seconds(read_all, paths))
        verifies.append(seconds(lambda: [verify_shard(folder, record, VOCAB) for record in writer.records]))
    size = sum(path.stat().st_size for path in paths)
    return {
        "bytes": size,
        "shards": len(paths),
        "read": statistics.median(reads),
        "verify": statistics.median(verifies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--model", choices=list(MODELS), default="24m")
    parser.add_argument("--shard-mb", type=int, default=512, help="MB of tokens in the shards verified")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", help="where the temporary folder goes (default: the system's temporary folder)")
    args = parser.parse_args()
    single_process_environment()
    init_distributed()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        ckpt = checkpoint_figures(args, Path(folder) / "checkpoints")
        shards = shard_figures(args, Path(folder) / "shards")
    megabytes = ckpt["bytes"] / 1e6
    print(f"torch {torch.__version__}, DeepSpeed {deepspeed.__version__}, CPU; median of {args.repeats}")
    print(f"\ncheckpoint: {args.model}, {ckpt['parameters']:,} parameters, {megabytes:,.0f} MB of files, 1 rank\n")
    print("| | seconds | MB/s | / DeepSpeed's save |\n| --- | --- | --- | --- |")
    for key, label in [
        ("stock", "save, DeepSpeed's engine (baseline)"),
        ("verified", "save, the trainer's engine: XXH3-128 of each file as written, marker"),
        ("verify", "verify the saved folder (checksums and code scan)"),
        ("xxh3_128", "XXH3-128 of the files alone"),
        ("sha256", "sha256 of the files alone"),
    ]:
        ratio = ckpt[key] / ckpt["stock"]
        print(f"| {label} | {ckpt[key]:.3f} | {megabytes / ckpt[key]:,.0f} | **{ratio:.2f}** |")
    shard_mb = shards["bytes"] / 1e6
    print(f"\nshards: {shards['shards']} of 8 MB, {shard_mb:,.0f} MB, files in the page cache\n")
    print("| | seconds | MB/s | / reading |\n| --- | --- | --- | --- |")
    for key, label in [("read", "read every shard (baseline)"), ("verify", "verify_shard on every shard")]:
        ratio = shards[key] / shards["read"]
        print(f"| {label} | {shards[key]:.3f} | {shard_mb / shards[key]:,.0f} | **{ratio:.2f}** |")


if __name__ == "__main__":
    main()
