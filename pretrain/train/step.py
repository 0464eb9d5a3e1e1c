"""What the loop repeats on every rank: one optimizer step (validation is pretrain/train/validate.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from data_pipeline.loader import BatchLoader
from pretrain.train import faults
from pretrain.train.spikes import SpikeWatch


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().float().cpu().clone()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def to_device(batch, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The loader's arrays on the device; to a GPU from page-locked memory, so the copy does not block the host."""
    tensors = [torch.from_numpy(array) for array in batch]
    if device.type == "cuda":
        tensors = [tensor.pin_memory() for tensor in tensors]
    return tuple(tensor.to(device, non_blocking=True) for tensor in tensors)


def train_step(
    engine, loader: BatchLoader, beat: Callable[[str], None], spikes: SpikeWatch | None = None
) -> tuple[torch.Tensor, float]:
    """One optimizer step over this rank's micro-batches: the mean loss, left on the device, and the seconds
    of this rank's own work (loading data, forward passes: pretrain/train/stragglers.py).

    `beat` marks each phase for hang detection (pretrain/train/heartbeat.py).
    With `spikes`, the step's loss is read before the last backward pass, and
    a spiking step is not applied (pretrain/train/spikes.py).
    """
    beat("data")
    started, first_sample = time.perf_counter(), loader.consumed
    micro_batches = loader.next_step()
    faults.slow_down(dist.get_rank())
    own = time.perf_counter() - started
    loss_sum = torch.zeros((), device=engine.device)
    for index, batch in enumerate(micro_batches):
        beat("forward")
        started = time.perf_counter()
        _, loss = engine(*to_device(batch, engine.device))
        loss = faults.spike(loss, first_sample)
        own += time.perf_counter() - started
        loss_sum += loss.detach()
        if spikes and index == len(micro_batches) - 1 and spikes.check(mean_over_ranks(loss_sum / len(micro_batches))):
            loss = loss * float("nan")  # the optimizer refuses a non-finite update: this step changes nothing
        beat("backward")
        engine.backward(loss)
        beat("optimizer")
        engine.step()  # steps the optimizer at the gradient-accumulation boundary only
    return loss_sum / len(micro_batches), own
