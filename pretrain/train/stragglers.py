"""Stragglers: each rank's own time per step, compared across ranks at every log interval.

Under data parallelism every rank waits for the slowest at the gradients'
reduction, so the wall time of a step is the same everywhere and names no
one. What differs is the work a rank does before it first waits: loading its
data and its forward passes. Each rank times that; at each log interval the
ranks gather their means (a collective the log interval makes anyway), rank
0 logs the min, median and max across ranks and the slowest rank, and a rank
slower than `train.straggler_factor` times the median for
`train.straggler_intervals` intervals in a row is named. On a GPU the
forward pass is timed as the host launches it, so a slow device shows only
once its queue is full.
"""

from __future__ import annotations

import statistics

import torch
import torch.distributed as dist


class StragglerWatch:
    def __init__(self, factor: float, intervals: int, device: torch.device):
        self.factor, self.intervals, self.device = factor, intervals, device
        self.own_seconds, self.steps = 0.0, 0
        self.slow_rank, self.slow_for = None, 0

    def add_step(self, own_seconds: float) -> None:
        self.own_seconds += own_seconds
        self.steps += 1

    def report(self) -> tuple[dict[str, float], str | None]:
        """The interval's per-rank metrics, and a line naming a straggler once it has been slow long enough
        (a collective call); starts the next interval."""
        mine = torch.tensor([self.own_seconds / max(self.steps, 1)], device=self.device)
        everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        times = torch.cat(everyone).tolist()
        self.own_seconds, self.steps = 0.0, 0
        median, slowest = statistics.median(times), max(range(len(times)), key=times.__getitem__)
        metrics = {
            "rank_time_min_s": min(times),
            "rank_time_median_s": median,
            "rank_time_max_s": times[slowest],
            "slowest_rank": slowest,
        }
        return metrics, self._straggler(times, median, slowest)

    def _straggler(self, times: list[float], median: float, slowest: int) -> str | None:
        if median <= 0 or times[slowest] < self.factor * median:
            self.slow_rank, self.slow_for = None, 0
            return None
        self.slow_for = self.slow_for + 1 if slowest == self.slow_rank else 1
        self.slow_rank = slowest
        if self.slow_for != self.intervals:  # named once, when it has been slow long enough
            return None
        return (
            f"straggler: rank {slowest} spends {times[slowest]:.3f} s per step loading data and in forward passes, "
            f"{times[slowest] / median:.1f}x the median rank ({median:.3f} s), for {self.intervals} log intervals "
            f"in a row; the other ranks wait for it at every step (train.straggler_factor, train.straggler_intervals)"
        )
