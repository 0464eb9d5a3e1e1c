"""What the training loop reports at each log interval: throughput, MFU, time left, and loss spikes.

Timing covers training steps only (evaluation and checkpoint saves are left
out), so tokens/s and MFU describe the model and the engine, and the time
left is the steps still to run at the recent pace.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections import deque

import torch

from pretrain.train.cost import mfu

SPIKE_WINDOW = 20  # logged losses the median is taken over
SPIKE_MIN_HISTORY = 5  # fewer than this and there is no "recent" to compare with


class IntervalMeter:
    """Accumulates the steps between two logs and turns them into metrics."""

    def __init__(self, tokens_per_step: int, flops_per_token: int, device_name: str, devices: int, spike_factor: float):
        self.tokens_per_step, self.flops_per_token, self.spike_factor = tokens_per_step, flops_per_token, spike_factor
        self.device_name, self.devices = device_name, devices
        self.steps, self.seconds = 0, 0.0
        self.started = time.perf_counter()  # elapsed time counts evaluation and checkpoints too
        self.recent_losses: deque[float] = deque(maxlen=SPIKE_WINDOW)

    def add_step(self, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds

    def metrics(self, loss: float, lr: float, step: int, max_steps: int) -> dict[str, float]:
        """The interval's metrics (and a `loss_spike` ratio when the loss spiked); starts the next interval."""
        step_time = self.seconds / self.steps
        tokens_per_s = self.tokens_per_step / step_time
        metrics = {"loss": loss, "lr": lr, "tokens_per_s": tokens_per_s, "step_time_s": step_time}
        metrics["eta_s"] = step_time * (max_steps - step)
        metrics["elapsed_s"] = time.perf_counter() - self.started
        utilization = mfu(tokens_per_s, self.flops_per_token, self.device_name, self.devices)
        if utilization is not None:  # only for a chip whose peak is known
            metrics["mfu"] = utilization
        ratio = spike_ratio(loss, self.recent_losses, self.spike_factor)
        if ratio is not None:
            metrics["loss_spike"] = ratio
        self.recent_losses.append(loss)
        self.steps, self.seconds = 0, 0.0
        return metrics


def spike_ratio(loss: float, recent: deque[float] | list[float], factor: float) -> float | None:
    """loss / median of the recent losses when that exceeds `factor` (or the loss is not finite), else None."""
    if len(recent) < SPIKE_MIN_HISTORY:
        return None
    median = statistics.median(recent)
    if not math.isfinite(loss):
        return math.inf
    ratio = loss / median if median > 0 else math.inf
    return ratio if ratio > factor else None


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s or 42s: short enough for a progress line."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def memory_metrics() -> dict[str, float]:
    """Peak memory since the last log: the GPU's allocator, or this process's resident set on CPU."""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return {"memory_peak_gb": peak, "memory_reserved_gb": torch.cuda.memory_reserved() / 2**30}
    # ru_maxrss is in KiB on Linux: the peak over the process's life.
    return {"memory_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
