"""The DeepSpeed engine a job trains on: the process group, the optimizer, the schedule, the generated config.

Kept apart from the training loop (and from MLflow) so that benchmarks and
tests build exactly the engine `pretrain train` builds.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed import comm as ds_comm
from deepspeed.runtime import compiler as ds_compiler
from deepspeed.utils import groups

from launch.stores import bound_store, client_store
from model import GPT
from pretrain.config import Config
from pretrain.train.deepspeed_config import deepspeed_config
from pretrain.train.float8 import convert_to_float8
from pretrain.train.optim import AdamW, clips_itself, lr_multiplier, param_groups, steps_directly
from pretrain.train.sequence_parallel import sequence_groups, split_sequences
from pretrain.weights.checkpoint_engine import VerifiedCheckpointEngine

# DeepSpeed's ZeRO calls a torch collective that torch has renamed; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
# How long the ranks wait for each other to join: a job's ranks may start minutes apart on a busy cluster.
STORE_TIMEOUT = datetime.timedelta(minutes=30)


def init_distributed() -> None:
    """Join the job's process group, as the launcher describes it in the environment.

    Rank 0 serves the group's store at MASTER_ADDR alone (launch/stores.py):
    127.0.0.1 for a job on one machine, not every interface. Under a
    launcher that shares its own store with the ranks, or Ray Train (which
    makes the group itself), there is nothing to serve.
    """
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized() and "MASTER_ADDR" in os.environ and not _launcher_serves_the_store():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        serve = bound_store if rank == 0 else client_store
        store = serve(host, port, world_size, STORE_TIMEOUT)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    if not ds_comm.is_initialized():  # DeepSpeed's layer over the group: made from it when there is one
        use_the_ninja_beside_python()  # on CPUs DeepSpeed builds its shared-memory collective here
        use_a_build_folder_of_this_environment()
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def use_the_ninja_beside_python() -> None:
    """Put the `ninja` installed beside this interpreter (pip's, a DeepSpeed dependency) first on PATH.

    On CPU ranks DeepSpeed compiles a shared-memory collective once (torch's
    JIT extensions, 50 CPU-s) and caches it in ~/.cache/torch_extensions. It
    runs whichever `ninja` comes first on PATH, and ninja judges the cache by
    a hash of the build command, which ninja 1.11 (Debian's) and 1.13 (pip's)
    compute differently: a rank that found the other one first (a venv
    activated or not, a Ray worker, a Slurm job) rebuilt the collective, and
    every rank on the machine waited for it. `make install` builds it the
    same way (`build_cpu_collective`).
    """
    here = Path(sys.executable).parent
    path = os.environ.get("PATH", os.defpath)
    if (here / "ninja").is_file() and path.split(os.pathsep)[0] != str(here):
        os.environ["PATH"] = f"{here}{os.pathsep}{path}"


def use_a_build_folder_of_this_environment() -> None:
    """Have torch build and cache DeepSpeed's ops in a folder of this Python environment's own.

    torch's default is one folder per user (~/.cache/torch_extensions/py311_cpu),
    and ninja rebuilds an op built from another environment, whose torch's
    paths are in the build command: two venvs of one user (two clones of the
    project) rebuilt the CPU collective in turn, 50 CPU-s each time. A
    TORCH_EXTENSIONS_DIR set by the user is kept.
    """
    from torch.utils.cpp_extension import get_default_build_root

    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(get_default_build_root(), f"env-{environment}"))


def build_cpu_collective() -> None:
    """Build DeepSpeed's shared-memory collective for CPU ranks as a rank would, so that none has to."""
    from deepspeed.comm.torch import build_shm_op

    use_the_ninja_beside_python()
    use_a_build_folder_of_this_environment()
    build_shm_op()


def _launcher_serves_the_store() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"


def build_engine(config: Config, model: GPT):
    # How the model's forward pass runs (not what it computes), as the config says.
    model.activation_checkpointing = config.train.activation_checkpointing
    model.loss_chunk_tokens = config.train.loss_chunk_tokens
    if config.train.float8.enabled:  # before DeepSpeed casts, shards and wraps the model
        convert_to_float8(model, config.train.float8)
    if config.parallel.sequence_parallel_size > 1:
        split_sequences(model, sequence_groups(config.parallel.sequence_parallel_size))
    mpu = None
    if config.parallel.tensor_parallel_size > 1:
        # The (data-parallel, tensor-parallel) process groups, made before the
        # engine so that DeepSpeed counts the batch over data-parallel ranks only.
        groups._init_tp_mesh_device(tensor_model_parallel_size=config.parallel.tensor_parallel_size)
        mpu = groups
    import_deepspeeds_muon_compiling_on_first_call()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        mpu=mpu,
        optimizer=make_optimizer(config, model),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config)),
        config=deepspeed_config(config),
    )
    # Every checkpoint file written through it is recorded with its checksum; every one read is loaded weights_only.
    engine.checkpoint_engine = VerifiedCheckpointEngine()
    if config.parallel.zero_stage == 0 and engine.dp_world_size == 1:
        # With no other data-parallel rank, DeepSpeed's gradient all-reduce
        # is a copy of every gradient into buckets and back, for nothing.
        engine.enable_backward_allreduce = False
    return engine


MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def import_deepspeeds_muon_compiling_on_first_call() -> None:
    """Import DeepSpeed's Muon optimizer with its kernels compiled on their first call, not on import.

    Every DeepSpeed optimizer (ZeRO, bf16) imports Muon's module to ask whether
    ours is a Muon, and that module wraps its kernels in `torch.compile` as it
    is imported, which imports TorchInductor's compiler: 1.1 to 1.9 CPU-s of
    each rank's start-up (bench/cli_startup.py), for an optimizer the project
    does not use. Wrapped this way, a Muon of DeepSpeed's would compile the same
    kernels, on first use as `torch.compile` does; our ranks import that
    compiler only when train.compile is on.
    """
    if MUON_MODULE in sys.modules:
        return
    eager_compile = ds_compiler.compile
    ds_compiler.compile = lambda: _compile_on_first_call
    try:
        importlib.import_module(MUON_MODULE)
    finally:
        ds_compiler.compile = eager_compile


def _compile_on_first_call(function):
    compiled = None

    @functools.wraps(function)
    def call(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            compiled = torch.compile(function)
        return compiled(*args, **kwargs)

    return call


def make_optimizer(config: Config, model: GPT) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only; fused into one kernel on GPUs.

    ZeRO and DeepSpeed's bf16 and fp16 wrap it in DeepSpeed optimizers that
    clip and skip steps with non-finite gradients. Without ZeRO, in fp32 or
    under autocast (fp32 weights), DeepSpeed steps it directly: our fused
    AdamW then does both itself, on the device (pretrain/train/optim.py).
    """
    settings = config.optimizer
    parameter_groups = param_groups(model, settings.weight_decay)
    hyperparameters = {"lr": settings.lr, "betas": (settings.beta1, settings.beta2)}
    if steps_directly(config):
        max_norm = settings.grad_clip if clips_itself(config) else 0.0
        sharded = config.parallel.tensor_parallel_size > 1
        return AdamW(parameter_groups, max_norm=max_norm, sharded=sharded, **hyperparameters)
    fused = torch.cuda.is_available() and not config.parallel.offload_optimizer
    return torch.optim.AdamW(parameter_groups, fused=fused or None, **hyperparameters)
