"""Run a job's ranks as local processes through torchrun (or DeepSpeed's launcher).

This module only builds and starts processes: what each rank runs is the
command it is given, so launching never imports the training loop.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOOPBACK_INTERFACE = "lo"


@dataclass(frozen=True)
class NodeLayout:
    """This host's part of a job: how many ranks it runs, and where the hosts meet when there are several."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # HOST:PORT on the node-rank-0 host
    rdzv_id: str = "pretrain"  # the same on every host of one job, and different between jobs
    hostfile: str | None = None  # DeepSpeed's launcher: it starts every host's ranks itself, over ssh
    max_restarts: int = 0  # torchrun restarts every rank (from the last checkpoint) after a failure, this many times


def torchrun_command(layout: NodeLayout, module: str, args: list[str]) -> list[str]:
    """torchrun for this host, through launch/torchrun.py, which binds its rendezvous to one address.

    One node meets at 127.0.0.1 (a free port). Several meet through c10d
    rendezvous at `rdzv_endpoint`, which node 0 hosts, bound to the host the
    endpoint names: every host runs the same command with its own node rank,
    and no ssh is needed. SIGTERM and SIGINT are left out of the signals
    torchrun handles: on them it would kill the ranks and fail the job,
    while the ranks themselves save a checkpoint and exit cleanly (see
    `launcher_preexec` and launch/signals.py).
    """
    command = [sys.executable, "-m", "launch.torchrun", f"--nproc-per-node={layout.nproc_per_node}"]
    one_host = layout.nnodes == 1 and layout.rdzv_endpoint is None
    endpoint = f"{LOOPBACK}:0" if one_host else layout.rdzv_endpoint
    is_host = layout.node_rank == 0
    command += [
        f"--nnodes={layout.nnodes}",
        f"--node-rank={layout.node_rank}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={layout.rdzv_id}",
        # Node 0 hosts the rendezvous: decided here rather than guessed from host names,
        # which also makes several "hosts" on one machine (tests) work.
        f"--rdzv-conf=is_host={'true' if is_host else 'false'}",
    ]
    if is_host:
        # The ranks' own store is served from here too: at the address the others reach the rendezvous on.
        command.append(f"--local-addr={endpoint.rpartition(':')[0]}")
    # On a failed rank torchrun's elastic agent stops the others and starts them all again, each
    # continuing from the run folder's last complete checkpoint: the same command, run again.
    command.append(f"--max-restarts={layout.max_restarts}")
    return [*command, "--signals-to-handle=SIGHUP,SIGQUIT", "-m", module, *args]


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
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def rank_environment(nproc_per_node: int, nnodes: int = 1) -> dict[str, str]:
    """Share the CPU cores among the ranks, so they do not oversubscribe them; one host's ranks talk over loopback.

    Gloo and NCCL listen on the interface of the host's name, which may be
    reachable from the network; the ranks of a job on one machine need only
    the loopback interface. A value the user has set wins.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if nnodes == 1:
        env.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
        env.setdefault("NCCL_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    return env


def oversubscription(nproc_per_node: int) -> str | None:
    """A warning when this host is asked for more ranks than it has GPUs, or, without GPUs, CPU cores.

    Ranks beyond the GPUs would share one (NCCL refuses that); beyond the cores
    they take turns on them, and the job runs slower than with fewer ranks.
    """
    gpus, cores = visible_gpus(), os.cpu_count() or 1
    if gpus and nproc_per_node > gpus:
        return (
            f"launch.nproc_per_node = {nproc_per_node}: more processes than this host's {gpus} GPU(s), which "
            f"ranks would have to share; use --nproc {gpus}"
        )
    if not gpus and nproc_per_node > cores:
        return (
            f"launch.nproc_per_node = {nproc_per_node}: more processes than this host's {cores} CPU cores; the "
            f"ranks take turns on them and the job runs slower than with --nproc {cores}"
        )
    return None


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, counted without importing torch (the launcher stays light)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip() and device.strip() != "-1"])
    listed = Path("/proc/driver/nvidia/gpus")
    return len(list(listed.iterdir())) if listed.is_dir() else 0


def warn_if_oversubscribed(nproc_per_node: int) -> None:
    warning = oversubscription(nproc_per_node)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


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
    """What the launcher process runs before it starts: ignore SIGTERM and SIGINT, and die with us when attached.

    A scheduler (Slurm's scancel, a time limit) signals every process of the
    job at once, the launcher between us and the ranks included. Ignoring
    SIGTERM there lets the ranks, which handle it, save and exit 0; torchrun
    then exits 0 too. Ctrl-C is for `pretrain train` to handle
    (launch/signals.py): the launcher starts in a session of its own, away
    from the terminal, and ignores SIGINT besides. Each rank installs its own
    handlers before it starts work.
    """

    def preexec() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    warn_if_oversubscribed(layout.nproc_per_node)
    command = launcher_command(layout, module, args, launcher)
    env = rank_environment(layout.nproc_per_node, layout.nnodes)
    # preexec_fn runs between fork and exec; it makes a few system calls, with nothing to lock.
    preexec = launcher_preexec(attached=True)
    return subprocess.Popen(command, env=env, preexec_fn=preexec, start_new_session=True)  # noqa: PLW1509
