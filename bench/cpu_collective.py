"""What a rank pays to find DeepSpeed's shared-memory collective for CPU ranks, when the process before it
found another `ninja` first on PATH: as it was (each rebuilt it) and as it is (the ninja beside Python).

    .venv/bin/python bench/cpu_collective.py               # 2 rounds

Needs two ninjas: the one pip installs beside Python (a DeepSpeed dependency) and another on PATH (Debian's
`apt-get install ninja-build`). Each round runs four processes in turn, alternating which ninja PATH finds
first: two as DeepSpeed builds the collective by itself (`build_shm_op`, the baseline: what a rank did) and
two as a rank does now (`build_cpu_collective`, pretrain/train/engine.py). Each figure is one process: its
wall time and the CPU time of the whole machine from /proc/stat (run it on an idle machine). The cache in
~/.cache/torch_extensions is left built as a rank builds it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from process_exit import busy_cpu_seconds  # bench/, the script's folder, is on sys.path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(sys.executable).parent
BY_DEEPSPEED = "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
BY_A_RANK = "from pretrain.train.engine import build_cpu_collective; build_cpu_collective()"


def timed(code: str, path: str) -> tuple[float, float]:
    cpu, started = busy_cpu_seconds(), time.perf_counter()
    env = os.environ | {"PATH": path}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - started, busy_cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    others = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if Path(p) != HERE]
    other = shutil.which("ninja", path=os.pathsep.join(others))
    if other is None or not (HERE / "ninja").is_file():
        sys.exit(f"needs a ninja beside {sys.executable} and another on PATH; found {other or 'no other'}")
    other_first = os.pathsep.join(others)
    paths = {"the other ninja first": other_first, "the ninja beside Python first": f"{HERE}{os.pathsep}{other_first}"}
    print(f"other ninja: {other}; beside Python: {HERE / 'ninja'}")
    for round_ in range(args.rounds):
        for label, code in (("as it was (build_shm_op)", BY_DEEPSPEED), ("as it is (a rank)", BY_A_RANK)):
            for first, path in paths.items():
                wall, cpu = timed(code, path)
                print(f"round {round_ + 1}  {label:26s} {first:31s} {wall:6.1f} s  {cpu:6.1f} CPU-s")


if __name__ == "__main__":
    main()
