"""The DeepSpeed JSON, generated from the typed config: never kept by hand beside it."""

from __future__ import annotations

from pretrain.config import Config
from pretrain.train.optim import clips_itself


def deepspeed_config(config: Config) -> dict:
    train = config.train
    ds = {
        # To DeepSpeed every rank is data-parallel, the ranks of a sequence-parallel group too, each
        # with its slice of the same sequences (pretrain/train/sequence_parallel.py): it counts them
        # as sequences of their own.
        "train_batch_size": train.global_batch_size * config.parallel.sequence_parallel_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accum_steps,
        # Our AdamW clips on the device where it can (pretrain/train/optim.py); DeepSpeed clips otherwise.
        "gradient_clipping": 0.0 if clips_itself(config) else config.optimizer.grad_clip,
        "zero_optimization": zero_config(config),
        "bf16": {"enabled": train.precision == "bf16"},
        # PyTorch autocast inside the engine: fp32 weights, gradients and optimizer
        # (our fused AdamW, no master copy); DeepSpeed autocasts the Linear layers to bf16.
        "torch_autocast": {"enabled": train.precision == "bf16-autocast", "dtype": "bfloat16"},
        # Dynamic loss scaling: fp16 gradients underflow without it. A step
        # whose gradients overflow is skipped and the scale halved.
        "fp16": {"enabled": train.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # The optimizer is PyTorch's AdamW with our parameter groups (weight
        # decay on matrices only); DeepSpeed wraps it for ZeRO.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        # We print and track progress ourselves.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if config.parallel.tensor_parallel_size > 1:
        ds["tensor_parallel"] = {
            "autotp_size": config.parallel.tensor_parallel_size,
            "partition_config": autotp_partition_config(),
        }
    return ds


def zero_config(config: Config) -> dict:
    zero = {"stage": config.parallel.zero_stage}
    if config.parallel.offload_optimizer:
        # Optimizer state and the optimizer step move to CPU memory; the
        # step stays PyTorch's AdamW (our parameter groups), not DeepSpeed's CPU Adam.
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return zero


def autotp_partition_config() -> dict:
    """How AutoTP shards the model, by parameter name (Megatron's column/row split).

    The query, key, value and first feed-forward projections are split by
    output features (column parallel: each rank computes some heads and some
    hidden units); the attention output and the last feed-forward projection
    by input features (row parallel: partial sums all-reduced once per
    sub-layer). DeepSpeed's `llama` preset says the same for the SwiGLU
    model; writing it out covers the GELU model too, whose MLP has
    `up_proj` and `down_proj` only. Embeddings, norms and the head stay whole.
    """
    return {
        "use_default_specs": False,
        "layer_specs": [
            {"patterns": [r".*\.self_attn\.[qkv]_proj\.weight$"], "partition_type": "column"},
            {"patterns": [r".*\.self_attn\.o_proj\.weight$"], "partition_type": "row"},
            {"patterns": [r".*\.mlp\.(gate|up)_proj\.weight$"], "partition_type": "column"},
            {"patterns": [r".*\.mlp\.down_proj\.weight$"], "partition_type": "row"},
        ],
    }
