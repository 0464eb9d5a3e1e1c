"""Run a job's ranks as local processes through torchrun.

This module only builds and starts processes: what each rank runs is the
command it is given, so launching never imports the training loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun_command(nproc_per_node: int, module: str, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run` on this host; `--standalone` picks a free rendezvous port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        module,
        *args,
    ]


def rank_environment(nproc_per_node: int) -> dict[str, str]:
    """Share the CPU cores among the ranks, so they do not oversubscribe them."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_local(nproc_per_node: int, module: str, args: list[str], log_file: Path | None = None) -> subprocess.Popen:
    """Start the ranks; with `log_file` they run detached from this terminal, writing there."""
    command = torchrun_command(nproc_per_node, module, args)
    env = rank_environment(nproc_per_node)
    if log_file is None:
        return subprocess.Popen(command, env=env)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
