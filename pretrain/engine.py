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

from model import GPT
from pretrain.config import Config
from pretrain.deepspeed_config import deepspeed_config
from pretrain.optim import lr_multiplier, param_groups

# DeepSpeed's ZeRO calls a torch collective that torch has renamed; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)


def init_distributed() -> None:
    """Join the job's process group, set up by the launcher (torchrun) through the environment."""
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def build_engine(config: Config, model: GPT):
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(
            param_groups(model, config.train.weight_decay),
            lr=config.train.lr,
            betas=(config.train.beta1, config.train.beta2),
        ),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config.train)),
        config=deepspeed_config(config),
    )
    return engine
