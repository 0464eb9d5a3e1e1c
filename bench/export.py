"""`pretrain export`: time and folder size per model, format and dtype, against reading the checkpoint.

    .venv/bin/python bench/export.py                            # gpt2-small and llama-160m, ZeRO-1
    .venv/bin/python bench/export.py --models llama-160m --zero-stage 3 --repeats 1

For each model, one process builds the engine `pretrain train` builds
(`pretrain.train.engine.build_engine`), trains one step on random token ids so that
Adam's state exists, and saves a checkpoint into a run folder with
`pretrain.weights.checkpoint.save`, beside the run's config.yaml and a tokenizer.
Then, for each export (Hugging Face fp32 and bf16, our own torch fp32), the
median over `--repeats` of `pretrain.export.exporter.export` in this process, and once
the whole command (`pretrain export` in a new process: Python, torch and
DeepSpeed start-up included). The baseline is reading the same checkpoint's
files with `torch.load` (page cache warm, as for the exports), which any
export has to do; "x read" is an export's time over it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_speed import single_process_environment  # bench/, the script's folder, is on sys.path

from data_pipeline.tokenizer import train_tokenizer
from model import GPT
from pretrain.config import load_config, save_config
from pretrain.export.exporter import export
from pretrain.train.engine import build_engine, init_distributed
from pretrain.weights import checkpoint, checkpoint_folder
from pretrain.weights.checkpoint_files import load_torch_file

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = {"hf fp32": ("hf", "fp32"), "hf bf16": ("hf", "bf16"), "torch fp32": ("torch", "fp32")}
MB = 1e6


def size_of(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def saved_run(work: Path, model: str, zero_stage: int) -> Path:
    """A run folder holding one checkpoint of `model` after one optimizer step."""
    overrides = [
        f"model.preset={model}",
        f"parallel.zero_stage={zero_stage}",
        "launch.nproc_per_node=1",
        "train.micro_batch_size=1",
        "train.global_batch_size=1",
        "train.seq_len=64",
        "lr_schedule.warmup_steps=1",
        f"checkpoint.root={work}",
        f"tracking.run_name={model}",
    ]
    config = load_config(ROOT / "configs" / "demo.yaml", overrides)
    torch.manual_seed(0)
    engine = build_engine(config, GPT(config.model))
    ids = torch.randint(0, config.model.vocab_size, (1, config.train.seq_len + 1))
    _, loss = engine(ids[:, :-1], ids[:, 1:])
    engine.backward(loss)
    engine.step()
    info = {"step": 1, "tokens_seen": 64, "mlflow_run_id": None, "config": config.to_public_dict()}
    checkpoint.save(engine, config.run_dir, 1, info, info, keep_last=1)
    save_config(config, config.run_dir / "config.yaml")
    texts = [path.read_text() for path in sorted((ROOT / "data_pipeline").glob("*.py"))]
    train_tokenizer(texts * 4, vocab_size=1024).save(str(config.run_dir / "tokenizer.json"))
    return config.run_dir


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def read_checkpoint(folder: Path) -> None:
    for path in sorted(folder.glob("*.pt")):
        load_torch_file(path)


def bench_model(work: Path, model: str, args: argparse.Namespace) -> list[str]:
    run_dir = saved_run(work, model, args.zero_stage)
    folder = checkpoint_folder.checkpoint_dir(run_dir) / checkpoint_folder.latest_tag(run_dir)
    read = median_seconds(lambda: read_checkpoint(folder), args.repeats)
    rows = [f"| {model} | checkpoint (baseline: read) | {read:.2f} | 1.00 | | {size_of(folder) / MB:,.0f} |"]
    for name, (export_format, dtype) in EXPORTS.items():
        out = work / f"{model}-{export_format}-{dtype}"
        seconds = median_seconds(lambda: export(run_dir, out, None, export_format, dtype), args.repeats)  # noqa: B023
        command = ""
        if name == "hf fp32":
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "pretrain.cli", "export", "--checkpoint", str(run_dir), "--out", str(out)],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            command = f"{time.perf_counter() - started:.2f}"
        rows.append(f"| | {name} | {seconds:.2f} | {seconds / read:.2f} | {command} | {size_of(out) / MB:,.0f} |")
        print(rows[-1], flush=True)
    shutil.rmtree(run_dir)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "llama-160m"])
    parser.add_argument("--zero-stage", type=int, default=1, choices=[0, 1, 2, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where the runs and exports go (default: a temporary folder)")
    args = parser.parse_args()
    single_process_environment()
    init_distributed()
    rows = [
        "| model | what | in-process s | x read | whole command s | MB on disk |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        for model in args.models:
            rows += bench_model(Path(scratch), model, args)
    print(f"\ntorch {torch.__version__}, {os.cpu_count()} CPUs, ZeRO-{args.zero_stage}, median of {args.repeats}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
