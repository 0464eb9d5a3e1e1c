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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class NodeLayout:
    """This host's part of a job: how many ranks it runs, and where the hosts meet when there are several."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # HOST:PORT on the node-rank-0 host
    rdzv_id: str = "pretrain"  # the same on every host of one job, and different between jobs
    hostfile: str | None = None  # DeepSpeed's launcher: it starts every host's ranks itself, over ssh


def torchrun_command(layout: NodeLayout, module: str, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run` for this host.

    One node uses `--standalone` (a free local rendezvous port). Several meet
    through c10d rendezvous at `rdzv_endpoint`, which node 0 hosts: every host
    runs the same command with its own node rank, and no ssh is needed.
    SIGTERM is left out of the signals torchrun handles: on it torchrun would
    kill the ranks 30 s later and fail the job, while the ranks themselves
    save a checkpoint and exit cleanly (see `launcher_preexec`).
    """
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={layout.nproc_per_node}"]
    if layout.nnodes == 1 and layout.rdzv_endpoint is None:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={layout.nnodes}",
            f"--node-rank={layout.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={layout.rdzv_endpoint}",
            f"--rdzv-id={layout.rdzv_id}",
            # Node 0 hosts the rendezvous: decided here rather than guessed from host names,
            # which also makes several "hosts" on one machine (tests) work.
            f"--rdzv-conf=is_host={'true' if layout.node_rank == 0 else 'false'}",
        ]
    return [*command, "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT", "-m", module, *args]


def deepspeed_command(layout: NodeLayout, module: str, args: list[str], master_port: int) -> list[str]:
    """The `deepspeed` launcher; ranks read their rank from the environment, as under torchrun.

    With a hostfile it starts the ranks of every host listed there, over ssh,
    so it runs on one host only.
    """
    hosts = [f"--hostfile={layout.hostfile}"] if layout.hostfile else [f"--num_gpus={layout.nproc_per_node}"]
    return [
        str(Path(sys.executable).parent / "deepspeed"),
        *hosts,
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


def launcher_preexec(attached: bool):
    """What the launcher process runs before it starts: ignore SIGTERM, and die with us when attached.

    A scheduler (Slurm's scancel, a time limit) signals every process of the
    job at once, the launcher between us and the ranks included. Ignoring
    SIGTERM there lets the ranks, which handle it, save and exit 0; torchrun
    then exits 0 too. Each rank restores the default before it starts work.
    """

    def preexec() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if attached:
            exit_with_parent()

    return preexec


def launcher_command(layout: NodeLayout, module: str, args: list[str], launcher: str) -> list[str]:
    if launcher == "deepspeed":
        return deepspeed_command(layout, module, args, free_port())
    return torchrun_command(layout, module, args)


def run_local(layout: NodeLayout, module: str, args: list[str], launcher: str = "torchrun") -> subprocess.Popen:
    """Start this host's ranks through `launcher`, attached: the launcher dies with this process.

    Each rank dies with its parent too (the rank calls `exit_with_parent`
    itself). Detached jobs run under launch/detached.py instead.
    """
    command = launcher_command(layout, module, args, launcher)
    env = rank_environment(layout.nproc_per_node)
    # preexec_fn runs between fork and exec; it makes two system calls, with nothing to lock.
    return subprocess.Popen(command, env=env, preexec_fn=launcher_preexec(attached=True))  # noqa: PLW1509


def wait_passing_sigterm_to_ranks(process: subprocess.Popen, on_sigterm: Callable[[], None] | None = None) -> int:
    """Wait for the launcher; a SIGTERM sent to this process goes on to the ranks themselves.

    Not to the launcher: DeepSpeed's kills its ranks on SIGTERM, and torchrun
    would too if it did not ignore it (`launcher_preexec`). Signalled directly,
    each rank finishes its step, saves a checkpoint and exits 0
    (pretrain/preemption.py), so the launcher, and this command, exit 0 too.
    `on_sigterm` is called first, when given.
    """

    def pass_on(signum, frame) -> None:
        if on_sigterm:
            on_sigterm()
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
