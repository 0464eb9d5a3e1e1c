"""The DeepSpeed JSON, generated from the typed config: never kept by hand beside it."""

from __future__ import annotations

from pretrain.config import Config


def deepspeed_config(config: Config) -> dict:
    train = config.train
    ds = {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accum_steps,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        # The optimizer is PyTorch's AdamW with our parameter groups (weight
        # decay on matrices only); DeepSpeed wraps it for ZeRO.
        "zero_allow_untested_optimizer": True,
        # We print and track progress ourselves.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if config.parallel.tensor_parallel_size > 1:
        ds["tensor_parallel"] = {"autotp_size": config.parallel.tensor_parallel_size}
    return ds
