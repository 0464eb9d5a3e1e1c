"""Run a job's ranks as local processes through torchrun.

This module only builds and starts processes: what each rank runs is the
command it is given, so launching never imports the training loop.
"""

from __future__ import annotations

import ctypes
import os
import signal
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


# Looked up once, here: a child between fork and exec should make no library lookups.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux; elsewhere a no-op).

    torchrun starts each rank in a session of its own, so without this a
    `kill -9` of `pretrain train` (or of torchrun) would leave the ranks
    running, holding their cores, GPUs and checkpoint folder.
    """
    if _LIBC is None:
        return
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def run_local(nproc_per_node: int, module: str, args: list[str], log_file: Path | None = None) -> subprocess.Popen:
    """Start the ranks; with `log_file` they run detached from this terminal, writing there.

    Attached, torchrun dies with this process (and each rank with torchrun:
    the rank calls `exit_with_parent` itself); detached, it outlives it.
    """
    command = torchrun_command(nproc_per_node, module, args)
    env = rank_environment(nproc_per_node)
    if log_file is None:
        # preexec_fn runs between fork and exec; it makes one system call, with nothing to lock.
        return subprocess.Popen(command, env=env, preexec_fn=exit_with_parent)  # noqa: PLW1509
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
