"""Faults that tests inject into real runs, through the environment: a slow rank, a loss spike.

The detectors they exercise (pretrain/train/stragglers.py, spikes.py) watch
real ranks under torchrun, where a test cannot reach into a process; the
variables are read once per process and, unset (always, outside tests),
cost one comparison per step.
"""

from __future__ import annotations

import os
import time

import torch

SLOW_RANK = "PRETRAIN_FAULT_SLOW_RANK"  # "R:S": rank R sleeps S seconds in each step's data phase
SPIKE_AT_SAMPLE = "PRETRAIN_FAULT_SPIKE_AT_SAMPLE"  # "N": the step whose batch starts at sample N has its loss x100
SPIKE_SCALE = 100.0


def _slow_rank() -> tuple[int, float] | None:
    value = os.environ.get(SLOW_RANK)
    if not value:
        return None
    rank, seconds = value.split(":")
    return int(rank), float(seconds)


_SLOW = _slow_rank()
_SPIKE = int(os.environ[SPIKE_AT_SAMPLE]) if os.environ.get(SPIKE_AT_SAMPLE) else None


def slow_down(rank: int) -> None:
    if _SLOW is not None and _SLOW[0] == rank:
        time.sleep(_SLOW[1])


def spike(loss: torch.Tensor, first_sample: int) -> torch.Tensor:
    """The loss of a step whose batch begins at sample `first_sample`: x100 at the injected one (so are its
    gradients, before clipping): what a batch of garbage does."""
    return loss * SPIKE_SCALE if first_sample == _SPIKE else loss
