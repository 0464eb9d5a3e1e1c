"""Checkpoint save and load: time and size on disk, through `pretrain.weights.checkpoint` with the real engine.

    .venv/bin/python bench/checkpoint_io.py                       # 24 M and gpt2-small (124 M), 1 and 2 ranks
    .venv/bin/python bench/checkpoint_io.py --models 24m --ranks 2 --repeats 9 --dir /mnt/fast

For each number of ranks, torchrun starts that many CPU processes (gloo).
For each model each builds the engine `pretrain train` builds
(`pretrain.train.engine.build_engine`, ZeRO stage 1, fp32 by default), trains one
step on random token ids so that Adam's state exists, then `--repeats` times
saves a checkpoint with `pretrain.weights.checkpoint.save` (DeepSpeed's files of every
rank with their checksums, the `complete` marker and `latest`) into a fresh run folder under a
temporary folder, flushes its files to disk (fsync), drops them from the
page cache (posix_fadvise DONTNEED) and loads it back with
`pretrain.weights.checkpoint.load`. Each time is taken on rank 0 from a barrier
before the call to a barrier after it; the figure is the median. The size is
every file of the checkpoint's folder.

A save returns once its files are in the page cache, as in training (nothing
calls fsync there): "save" is serialization and copying into memory, unless
the kernel makes the writer wait for the disk. "flush" is the time the disk
then takes to hold it. The load reads from the disk, as a resumed job does.

MB/s is 10^6 bytes of checkpoint per second; the ratios compare each
number of ranks with 1 rank.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from launch.local import NodeLayout, rank_environment, torchrun_command
from model import GPT
from pretrain.config import Config, load_config
from pretrain.train.engine import build_engine, init_distributed
from pretrain.weights import checkpoint

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "24m": ["model.n_embd=512", "model.n_layer=7"],  # configs/demo.yaml's model, wider and deeper
    "gpt2-small": ["model.preset=gpt2-small"],
}
MIB = 2**20


def job_config(args: argparse.Namespace, model: str, ranks: int) -> Config:
    return load_config(
        args.config,
        [
            *MODELS[model],
            f"parallel.zero_stage={args.zero_stage}",
            f"train.precision={args.precision}",
            f"launch.nproc_per_node={ranks}",
            "train.micro_batch_size=1",
            f"train.global_batch_size={ranks}",
            "train.seq_len=64",
            "lr_schedule.warmup_steps=1",
        ],
    )


def trained_engine(config: Config):
    """The engine after one optimizer step, so that the checkpoint holds Adam's state."""
    torch.manual_seed(config.train.seed)
    engine = build_engine(config, GPT(config.model))
    ids = torch.randint(0, config.model.vocab_size, (1, config.train.seq_len + 1))
    _, loss = engine(ids[:, :-1], ids[:, 1:])
    engine.backward(loss)
    engine.step()
    return engine


def timed(call, *args) -> tuple[float, object]:
    """Seconds of a collective call, from a barrier before it to a barrier after it, and what it returned."""
    dist.barrier()
    started = time.perf_counter()
    result = call(*args)
    dist.barrier()
    return time.perf_counter() - started, result


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def flush(folder: Path) -> None:
    """On rank 0: write the folder's files to disk."""
    for path in sorted(folder.rglob("*")) if dist.get_rank() == 0 else []:
        if path.is_file():
            with open(path, "rb+") as file:
                os.fsync(file.fileno())


def evict(folder: Path) -> None:
    """On rank 0: drop the folder's files (written to disk already) from the page cache."""
    for path in sorted(folder.rglob("*")) if dist.get_rank() == 0 else []:
        if path.is_file():
            with open(path, "rb") as file:
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def measure_model(args: argparse.Namespace, model: str) -> dict:
    """Save and load `--repeats` times; rank 0's times, and the checkpoint's size."""
    config = job_config(args, model, dist.get_world_size())
    engine = trained_engine(config)
    client_state = {"step": 1, "tokens_seen": config.train.global_batch_size * config.train.seq_len}
    times, size = {"save_s": [], "flush_s": [], "load_s": []}, 0
    for repeat in range(args.repeats):
        run_dir = Path(args.dir) / model / f"repeat_{repeat}"
        seconds, saved = timed(checkpoint.save, engine, run_dir, 1, client_state, {"step": 1}, 1)
        times["save_s"].append(seconds)
        times["flush_s"].append(timed(flush, run_dir)[0])
        size = folder_bytes(saved) if dist.get_rank() == 0 else 0
        timed(evict, run_dir)
        times["load_s"].append(timed(checkpoint.load, engine, run_dir, None)[0])
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(run_dir)
    parameters = sum(p.numel() for p in engine.module.parameters())
    engine.destroy()
    return {"model": model, "parameters": parameters, "bytes": size} | times


def worker(args: argparse.Namespace) -> None:
    init_distributed()
    results = [measure_model(args, model) for model in args.models]
    if dist.get_rank() == 0:
        Path(args.results).write_text(json.dumps(results))
    dist.destroy_process_group()


def run_ranks(args: argparse.Namespace, ranks: int, folder: Path) -> list[dict]:
    """Start `ranks` worker processes with torchrun; return what rank 0 measured, one entry per model."""
    results = folder / f"{ranks}.json"
    worker_args = ["--worker", "--results", str(results), "--dir", str(folder), "--config", args.config]
    worker_args += ["--models", *args.models, "--repeats", str(args.repeats), "--precision", args.precision]
    worker_args += ["--zero-stage", str(args.zero_stage)]
    command = torchrun_command(NodeLayout(ranks), "bench.checkpoint_io", worker_args)
    subprocess.run(command, cwd=ROOT, env=rank_environment(ranks), check=True, stdout=subprocess.DEVNULL)
    return [result | {"ranks": ranks} for result in json.loads(results.read_text())]


HEADER = ["model", "parameters", "ranks", "size MiB", "save s", "flush s", "load s", "save MB/s", "save+flush MB/s"]
HEADER += ["load MB/s", "save / 1 rank", "load / 1 rank", "all saves s", "all flushes s", "all loads s"]


def table_row(result: dict, one_rank: dict | None) -> list[str]:
    save, flushed, load = (statistics.median(result[key]) for key in ("save_s", "flush_s", "load_s"))
    ratios = ["", ""]
    if one_rank is not None:
        ratios = [f"**{save / statistics.median(one_rank['save_s']):.2f}**"]
        ratios.append(f"**{load / statistics.median(one_rank['load_s']):.2f}**")
    megabytes = result["bytes"] / 1e6
    return [
        result["model"],
        f"{result['parameters'] / 1e6:.1f} M",
        str(result["ranks"]),
        f"{result['bytes'] / MIB:,.0f}",
        f"{save:.2f}",
        f"{flushed:.2f}",
        f"{load:.2f}",
        f"{megabytes / save:,.0f}",
        f"{megabytes / (save + flushed):,.0f}",
        f"{megabytes / load:,.0f}",
        *ratios,
        *(", ".join(f"{s:.2f}" for s in result[key]) for key in ("save_s", "flush_s", "load_s")),
    ]


def print_table(results: list[dict]) -> None:
    print("| " + " | ".join(HEADER) + " |\n|" + " --- |" * len(HEADER))
    for result in sorted(results, key=lambda r: (r["parameters"], r["ranks"])):
        one_rank = next((r for r in results if r["model"] == result["model"] and r["ranks"] == 1), None)
        print("| " + " | ".join(table_row(result, one_rank)) + " |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="data-parallel ranks (CPU processes)")
    parser.add_argument("--repeats", type=int, default=5, help="saves and loads per model; the figure is the median")
    parser.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--dir", help="where the temporary folder goes (default: the system's temporary folder)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        results = [result for ranks in args.ranks for result in run_ranks(args, ranks, Path(folder))]
    print(f"torch {torch.__version__}, DeepSpeed {deepspeed.__version__}, CPU (gloo)")
    print(f"ZeRO {args.zero_stage}, {args.precision}; median of {args.repeats}; MiB = 2^20 bytes, MB = 10^6 bytes")
    print_table(results)


if __name__ == "__main__":
    main()
