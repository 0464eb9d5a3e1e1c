"""Stopping on request: on SIGTERM (or Ctrl-C), finish the step, save a checkpoint and exit 0.

Schedulers ask a job to stop with SIGTERM some time before they kill it
(Slurm before a time limit or a preemption, Kubernetes before evicting a
pod). A run that then saves and exits cleanly loses nothing: requeued, it
resumes from that checkpoint. `pretrain train` passes the signal (and a
first Ctrl-C) on to every rank (launch/signals.py).

A rank installs its handlers first thing (`listen`), before its slow
start-up, so a signal at any moment is kept: the handler only raises a flag.
The ranks agree through one all-reduce whether any of them saw it: after
start-up (they then stop before training, with nothing new to save) and
after every step (they stop together after the same step and save).
"""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

INTERRUPTED = 130
_stop = threading.Event()
_interrupts = [0]


def listen() -> None:
    """Raise the stop flag on SIGTERM and SIGINT from now on; a second SIGINT ends the process at once.

    Python takes signals in the main thread only. Ray Train runs the loop in
    another thread and stops its workers itself: there nothing is installed.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigint)


def stop_listening() -> None:
    """Ignore SIGTERM and SIGINT from now on, when the rank's work is done.

    The launcher sends SIGTERM again until the ranks have exited; Python puts
    back the default handler (which kills) while it shuts down, but leaves
    an ignored signal ignored.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _on_sigterm(signum, frame) -> None:
    # Only a flag: the step in flight finishes, and collectives stay in step across ranks.
    _stop.set()


def _on_sigint(signum, frame) -> None:
    _interrupts[0] += 1
    if _interrupts[0] > 1:
        os._exit(INTERRUPTED)  # a checkpoint cut short here has no marker and is never used
    _stop.set()


def stop_requested_here() -> bool:
    return _stop.is_set()


class PreemptionWatch:
    """Asks all ranks whether any was asked to stop.

    The flag travels on a CPU (gloo) process group of its own, so asking
    after every step never waits on the GPU's queue of kernels.
    """

    def __init__(self):
        self.group = dist.new_group(backend="gloo")  # a collective call: every rank makes it

    def requested(self) -> bool:
        """Whether any rank received SIGTERM or SIGINT (a collective call: every rank makes it)."""
        flag = torch.tensor(float(stop_requested_here()))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())
