"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from pretrain.config import Config


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on norms, biases or embeddings (as in GPT-2 and Llama)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.ndim >= 2 and "embed" not in name
        (decay if is_matrix else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class AdamW(torch.optim.AdamW):
    """PyTorch's AdamW, which skips a step whose gradients are not all finite.

    Without ZeRO, in fp32 or under autocast, DeepSpeed steps the client
    optimizer itself; like its own ZeRO and mixed-precision optimizers, this
    one then sets `overflow`, which DeepSpeed reads to count the step as
    skipped and to hold the learning-rate schedule (pretrain/train/stability.py).
    DeepSpeed needs that answer as a Python bool before it steps the
    schedule, so on a GPU the check waits for the gradients: one host-device
    synchronization per optimizer step (not per micro-batch), as DeepSpeed's
    own overflow checks make.
    """

    overflow = False

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.isfinite(torch.nn.utils.get_total_norm(grads)).float()
        if dist.is_initialized():  # tensor-parallel ranks hold different shards: all must agree
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.overflow = not finite.item()
        if self.overflow:
            return None
        return super().step(closure)


def lr_multiplier(config: Config) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine or linear decay to `min_lr` at `train.max_steps`.

    Returns a factor of the peak learning rate (optimizer.lr), as torch's LambdaLR expects.
    """
    schedule, max_steps = config.lr_schedule, config.train.max_steps
    floor = schedule.min_lr / config.optimizer.lr

    def multiplier(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        if schedule.decay == "constant":
            return 1.0
        progress = min(1.0, (step - schedule.warmup_steps) / max(1, max_steps - schedule.warmup_steps))
        if schedule.decay == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return multiplier


def apply_settings(engine, config: Config) -> None:
    """After a checkpoint has loaded: this config's schedule and optimizer settings, at the step reached.

    Loading restores the optimizer's hyperparameters and the schedule's base
    learning rate as they were saved; a resumed run is to take the ones it
    is given now (pretrain/train/resume.py). The schedule's function is already
    this config's (LambdaLR keeps functions out of its state), so only its
    base rate and the rate of the current step are set anew. The groups are
    in the order `param_groups` made them: with weight decay, then without.
    """
    scheduler, optimizer, settings = engine.lr_scheduler, engine.optimizer, config.optimizer
    scheduler.base_lrs = [settings.lr] * len(scheduler.base_lrs)
    lr = settings.lr * lr_multiplier(config)(scheduler.last_epoch)
    scheduler._last_lr = [lr] * len(scheduler.base_lrs)
    for index, group in enumerate(optimizer.param_groups):
        group.update(lr=lr, initial_lr=settings.lr, betas=(settings.beta1, settings.beta2))
        group["weight_decay"] = settings.weight_decay if index == 0 else 0.0
    if hasattr(optimizer, "clip_grad"):  # ZeRO's optimizers restore the clipping they were saved with
        optimizer.clip_grad = settings.grad_clip
