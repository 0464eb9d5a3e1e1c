"""Run a job's ranks as local processes through torchrun (or DeepSpeed's launcher).

This module only builds and starts processes: what each rank runs is the
command it is given, so launching never imports the training loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil


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


def deepspeed_command(nproc_per_node: int, module: str, args: list[str], master_port: int) -> list[str]:
    """The `deepspeed` launcher on this host; ranks read their rank from the environment, as under torchrun."""
    return [
        str(Path(sys.executable).parent / "deepspeed"),
        f"--num_gpus={nproc_per_node}",
        f"--master_port={master_port}",
        "--no_local_rank",
        "--module",
        module,
        *args,
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def run_local(
    nproc_per_node: int,
    module: str,
    args: list[str],
    log_file: Path | None = None,
    launcher: str = "torchrun",
) -> subprocess.Popen:
    """Start the ranks through `launcher`; with `log_file` they run detached from this terminal, writing there.

    Attached, the launcher dies with this process (and each rank with its
    parent: the rank calls `exit_with_parent` itself); detached, it outlives it.
    """
    if launcher == "deepspeed":
        command = deepspeed_command(nproc_per_node, module, args, free_port())
    else:
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


def wait_passing_sigterm_to_ranks(process: subprocess.Popen) -> int:
    """Wait for the launcher; a SIGTERM sent to this process goes on to the ranks themselves.

    torchrun would answer SIGTERM by terminating its workers, killing them
    after 30 s and exiting with an error (DeepSpeed's launcher kills them at
    once). Signalled directly, each rank
    instead finishes its step, saves a checkpoint and exits 0
    (pretrain/preemption.py), so torchrun, and this command, exit 0 too.
    """

    def pass_on(signum, frame) -> None:
        # The ranks, not the launcher between (torchrun, or DeepSpeed's launch.py, which would kill them).
        for child in psutil.Process(process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # gone already, or not ours to read
                if "LOCAL_RANK" in child.environ():
                    child.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
