"""The DeepSpeed engine a job trains on: the process group, the optimizer, the schedule, the generated config.

Kept apart from the training loop (and from MLflow) so that benchmarks and
tests build exactly the engine `pretrain train` builds.
"""

from __future__ import annotations

import logging
import warnings

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import groups

from model import GPT
from pretrain.config import Config
from pretrain.deepspeed_config import deepspeed_config
from pretrain.optim import AdamW, lr_multiplier, param_groups

# DeepSpeed's ZeRO calls a torch collective that torch has renamed; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)


def init_distributed() -> None:
    """Join the job's process group, set up by the launcher (torchrun) through the environment."""
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def build_engine(config: Config, model: GPT):
    # How the model's forward pass runs (not what it computes), as the config says.
    model.activation_checkpointing = config.train.activation_checkpointing
    model.loss_chunk_tokens = config.train.loss_chunk_tokens
    mpu = None
    if config.parallel.tensor_parallel_size > 1:
        # The (data-parallel, tensor-parallel) process groups, made before the
        # engine so that DeepSpeed counts the batch over data-parallel ranks only.
        groups._init_tp_mesh_device(tensor_model_parallel_size=config.parallel.tensor_parallel_size)
        mpu = groups
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        mpu=mpu,
        optimizer=make_optimizer(config, model),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config.train)),
        config=deepspeed_config(config),
    )
    return engine


def make_optimizer(config: Config, model: GPT) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only; fused into one kernel on GPUs.

    ZeRO and DeepSpeed's bf16 and fp16 wrap it in DeepSpeed optimizers that
    skip steps with non-finite gradients. Without ZeRO, in fp32 or under
    autocast (fp32 weights), DeepSpeed steps it directly: our AdamW then
    does that check itself.
    """
    train = config.train
    stepped_directly = config.parallel.zero_stage == 0 and train.precision in ("fp32", "bf16-autocast")
    optimizer_class = AdamW if stepped_directly else torch.optim.AdamW
    fused = torch.cuda.is_available() and not config.parallel.offload_optimizer
    return optimizer_class(
        param_groups(model, train.weight_decay), lr=train.lr, betas=(train.beta1, train.beta2), fused=fused or None
    )
