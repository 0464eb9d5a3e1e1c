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


def steps_directly(config: Config) -> bool:
    """Whether DeepSpeed steps our optimizer itself: without ZeRO, with fp32 weights (fp32 or bf16-autocast).

    ZeRO's optimizers and DeepSpeed's bf16 and fp16 ones wrap it instead, and
    do the clipping and the non-finite check themselves.
    """
    return config.parallel.zero_stage == 0 and config.train.precision in ("fp32", "bf16-autocast")


def clips_itself(config: Config) -> bool:
    """Whether our AdamW clips the gradients, on the device, in place of DeepSpeed's `clip_fp32_gradients`.

    DeepSpeed's clipping computes one norm per parameter and reads the total
    on the host; ours is one fused norm that stays on the device. Under
    tensor parallelism DeepSpeed's knows which parameters are sharded and
    which replicated, so it keeps that case.
    """
    return steps_directly(config) and config.parallel.tensor_parallel_size == 1 and config.optimizer.grad_clip > 0


class AdamW(torch.optim.AdamW):
    """PyTorch's fused AdamW, which clips the gradients and skips a step whose gradients are not all finite,
    deciding both on the device.

    Without ZeRO, in fp32 or under autocast, DeepSpeed steps the client
    optimizer itself. The gradient norm is computed once and kept on the
    device: the clipping scales the gradients by it, and the fused kernel
    reads whether it is finite (`found_inf`, as under torch's GradScaler)
    and then leaves the weights, the moments and the step count as they were.
    So the step is queued whole without the host waiting for the gradients.

    Like DeepSpeed's own ZeRO and mixed-precision optimizers, it answers
    `overflow`, which DeepSpeed reads right after the step to count it as
    skipped and to hold the learning-rate schedule
    (pretrain/train/stability.py). That answer is the step's one read from
    the device, made once all of the step's work is queued.
    """

    def __init__(self, params, *, max_norm: float = 0.0, sharded: bool = False, **settings):
        """`max_norm`: clip to it (0: DeepSpeed clips, or nobody). `sharded`: the gradients are tensor-parallel
        shards, whose norm on one rank is not the model's, so it is neither used nor reported."""
        super().__init__(params, fused=True, **settings)
        self.max_norm, self.sharded = max_norm, sharded
        self.found_inf = torch.zeros(())
        self._global_grad_norm: torch.Tensor | None = None  # DeepSpeed's name: engine.get_global_grad_norm()

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        found_inf = (~torch.isfinite(norm)).float()
        if self.sharded:  # each rank's shards differ, and all must agree (data-parallel gradients are equal)
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
        if self.max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, norm, foreach=True)
        self.found_inf = found_inf
        if not self.sharded:
            self._global_grad_norm = norm
        return super().step(closure)

    @property
    def overflow(self) -> bool:
        return bool(self.found_inf.item())


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
