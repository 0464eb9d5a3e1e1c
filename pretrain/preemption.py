"""Preemption: on SIGTERM, finish the step, save a checkpoint and exit 0.

Schedulers ask a job to stop with SIGTERM some time before they kill it
(Slurm before a time limit or a preemption, Kubernetes before evicting a
pod). A run that then saves and exits cleanly loses nothing: requeued, it
resumes from that checkpoint. `pretrain train` forwards the signal to every
rank (launch/local.py); each rank only raises a flag in its handler, and the
ranks agree after every step, through one all-reduce, whether any of them saw
it, so that all stop after the same step and save together.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist


class PreemptionWatch:
    """Raises a flag on SIGTERM; `requested()` asks all ranks whether any got it.

    The flag travels on a CPU (gloo) process group of its own, so asking
    after every step never waits on the GPU's queue of kernels.
    """

    def __init__(self):
        self.group = dist.new_group(backend="gloo")  # a collective call: every rank makes it
        self.received = False
        # Python takes signals in the main thread only. Ray Train runs the loop in
        # another thread and stops its workers itself: there the watch only listens.
        self._listening = threading.current_thread() is threading.main_thread()
        if self._listening:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        # Only a flag: the step in flight finishes, and collectives stay in step across ranks.
        self.received = True

    def requested(self) -> bool:
        """Whether any rank received SIGTERM (a collective call: every rank makes it after every step)."""
        flag = torch.tensor(float(self.received))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def close(self) -> None:
        if self._listening:
            signal.signal(signal.SIGTERM, self._previous)
