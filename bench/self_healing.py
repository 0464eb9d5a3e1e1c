"""How long a run takes to notice a hung rank, to restart after a dead one, and to continue on another layout.

    .venv/bin/python bench/self_healing.py --data outputs/data/tiny          # the tiny dataset, built first
    .venv/bin/python bench/self_healing.py --data outputs/data/tiny --hang-timeout 10

Three real 2-rank runs of the tiny config (configs/tiny.yaml) on gloo, in a
temporary folder:

- hang: `train.hang_timeout_s` set, rank 1 stopped with SIGSTOP after step 3;
  the time from the stop to the `hang:` line, against the timeout (the baseline:
  no detector can name a hang sooner).
- restart: `launch.max_restarts=1`, rank 1 killed with SIGKILL after step 6
  (checkpoints every 2 steps); the time from the kill to the first step line
  of the restarted job, against the time the first attempt took from its
  command to its first step line (a cold start: what a person rerunning
  the command would pay).
- reshard: the run's last checkpoint continued on 1 process; the time of the
  conversion and load (from the rank's log), against an unchanged resume on 2.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def command(work: Path, data: Path, name: str, *overrides: str) -> list[str]:
    return [
        *(sys.executable, "-m", "pretrain.cli", "train", "--config", str(ROOT / "configs" / "tiny.yaml")),
        *(
            f"data.output_dir={data}",
            f"checkpoint.root={work / 'runs'}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        ),
        *(f"tracking.run_name={name}", "train.log_interval=1", "eval.interval=1000", "lr_schedule.warmup_steps=2"),
        *overrides,
    ]


def start(cmd: list[str], work: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(process: subprocess.Popen, pattern: str) -> float:
    for line in process.stdout:
        if re.search(pattern, line):
            return time.monotonic()
    raise SystemExit(f"the run ended before printing {pattern!r}")


def rank_1(process: subprocess.Popen) -> psutil.Process:
    for child in psutil.Process(process.pid).children(recursive=True):
        if child.environ().get("RANK") == "1" and "pretrain.cli" in " ".join(child.cmdline()):
            return child
    raise SystemExit("rank 1 not found")


def hang(work: Path, data: Path, timeout: float) -> float:
    process = start(command(work, data, "hang", "train.max_steps=1000", f"train.hang_timeout_s={timeout}"), work)
    wait_for(process, r"^step +3/")
    stopped = rank_1(process)
    stopped.suspend()
    at = time.monotonic()
    detected = wait_for(process, r"^hang:") - at
    stopped.kill()
    process.wait()
    return detected


def restart(work: Path, data: Path) -> tuple[float, float]:
    overrides = ("train.max_steps=12", "checkpoint.every_steps=2", "launch.max_restarts=1")
    started = time.monotonic()
    process = start(command(work, data, "restart", *overrides), work)
    cold = wait_for(process, r"^step +1/") - started
    wait_for(process, r"^step +6/")
    os.kill(rank_1(process).pid, signal.SIGKILL)
    killed = time.monotonic()
    restarted = wait_for(process, r"^step +[5-7]/") - killed  # the first step trained after the restart
    process.stdout.read()
    process.wait()
    return restarted, cold


def resume_seconds(work: Path, data: Path, *overrides: str) -> float:
    """The time from the command to the first step line of a resumed run."""
    started = time.monotonic()
    process = start(command(work, data, "restart", *overrides), work)
    first = wait_for(process, r"^step +1[3-6]/") - started
    process.stdout.read()
    process.wait()
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a dataset built with configs/tiny.yaml")
    parser.add_argument("--hang-timeout", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        detected = hang(work, args.data.resolve(), args.hang_timeout)
        print(
            f"hang: named {detected:.1f} s after SIGSTOP; train.hang_timeout_s = {args.hang_timeout:g} "
            f"({detected / args.hang_timeout:.2f}x the timeout)"
        )
        restarted, cold = restart(work, args.data.resolve())
        print(
            f"restart: first step {restarted:.1f} s after kill -9 of rank 1; a cold start's first step took "
            f"{cold:.1f} s ({restarted / cold:.2f}x)"
        )
        same = resume_seconds(work, args.data.resolve(), "train.max_steps=14")
        other = resume_seconds(work, args.data.resolve(), "train.max_steps=16", "launch.nproc_per_node=1")
        print(
            f"reshard: a resume on 1 rank from the 2-rank checkpoint reached its first step in {other:.1f} s; "
            f"an unchanged resume on 2 ranks in {same:.1f} s ({other / same:.2f}x)"
        )


if __name__ == "__main__":
    main()
