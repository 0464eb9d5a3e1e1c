"""The full fp32 weights of a DeepSpeed checkpoint, gathered in one process from the shards of every rank.

A checkpoint folder holds, per tensor-parallel rank `mp_rank_NN`:
- `*mp_rank_NN_model_states.pt`: the module's state dict (ZeRO 0-2; under
  ZeRO-3 only placeholders) and each parameter's shape on that rank;
- `*mp_rank_NN_optim_states.pt`, one per data-parallel rank (ZeRO 1-3): that
  rank's slice of the fp32 master weights, which are the exact ones also when
  training ran in bf16 or fp16.

DeepSpeed's `zero_to_fp32` joins the data-parallel slices but knows nothing of
tensor parallelism: it reads every optimizer file of the folder as if all were
data-parallel ranks. So each tensor-parallel rank is given to it alone, through
a folder of links to that rank's files; the rank's weights come back in the
shapes AutoTP gave them, and are joined here along the dimension AutoTP split:
the output features of a column-parallel projection, the input features of a
row-parallel one (pretrain/train/deepspeed_config.py). No process group is needed, so
a checkpoint of any number of ranks is exported by one process.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import sys
import tempfile
from pathlib import Path

import torch

from model import GPT, GPTConfig
from pretrain.errors import CheckpointError
from pretrain.weights.checkpoint_files import first_refused_file, load_torch_file, one_line, weights_only_loads

TP_RANK = re.compile(r"mp_rank_(\d+)_(model|optim)_states\.pt$")


def consolidated_state_dict(model_config: GPTConfig, folder: Path) -> dict[str, torch.Tensor]:
    """The whole model's fp32 state dict from a checkpoint folder (`<run>/checkpoints/step_N`)."""
    files = sorted(folder.glob("*_states.pt"))
    ranks = sorted({int(match.group(1)) for match in map(TP_RANK.search, (f.name for f in files)) if match})
    if not ranks:
        raise CheckpointError(f"{folder}: no DeepSpeed model states (*mp_rank_NN_model_states.pt) in this folder")
    shards = [tensor_parallel_rank_state(folder, files, rank) for rank in ranks]
    return join_tensor_parallel_shards(shards, model_config, folder)


def tensor_parallel_rank_state(folder: Path, files: list[Path], rank: int) -> dict[str, torch.Tensor]:
    """One tensor-parallel rank's fp32 weights: from its optimizer slices if it has them, else its module."""
    own = [f for f in files if (match := TP_RANK.search(f.name)) and int(match.group(1)) == rank]
    if not any(f.name.endswith("_optim_states.pt") for f in own):
        # ZeRO 0 without mixed precision: the module's weights are the fp32 masters, whole on every data-parallel rank.
        model_states = next(f for f in own if f.name.endswith("_model_states.pt"))
        module = load_torch_file(model_states)["module"]
        return {name: tensor.float() for name, tensor in module.items()}
    with tempfile.TemporaryDirectory() as scratch:
        view = Path(scratch) / folder.name
        view.mkdir()
        for path in own:
            (view / path.name).symlink_to(path.resolve())
        # DeepSpeed reports on stdout (its accelerator when imported, its progress
        # while merging), but a command's stdout is its result: a generated text, a
        # table. Imported here, so that reading an exported folder does not pay for it.
        with contextlib.redirect_stdout(sys.stderr):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            # DeepSpeed's reader asks torch.load for weights_only=False: made weights_only here.
            try:
                with weights_only_loads():
                    return get_fp32_state_dict_from_zero_checkpoint(scratch, tag=folder.name)
            except (FileNotFoundError, ValueError) as err:
                raise CheckpointError(
                    f"{folder}: the ZeRO shards of tensor-parallel rank {rank} are not whole: {err}"
                ) from None
            except (pickle.UnpicklingError, RuntimeError) as err:
                raise CheckpointError(first_refused_file(own) or f"{folder}: {one_line(err)}") from None


def join_tensor_parallel_shards(
    shards: list[dict[str, torch.Tensor]], model_config: GPTConfig, folder: Path
) -> dict[str, torch.Tensor]:
    """One state dict from the tensor-parallel ranks' parts, checked against the model's shapes."""
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in GPT(model_config).state_dict().items()}
    if model_config.tie_embeddings:
        # A tied head is the token embedding: DeepSpeed lists it under either name or both.
        del shapes["lm_head.weight"]
        for shard in shards:
            shard.setdefault("embed_tokens.weight", shard.pop("lm_head.weight", None))
            shard.pop("lm_head.weight", None)
    if set(shards[0]) != set(shapes):
        differing = sorted(set(shards[0]) ^ set(shapes))[:5]
        raise CheckpointError(f"{folder}: the checkpoint's parameters are not the model's in config.yaml: {differing}")
    joined = {}
    for name, shape in shapes.items():
        parts = [shard[name] for shard in shards]
        if parts[0].shape == shape:  # kept whole (embeddings, norms, the head): the same on every rank
            joined[name] = parts[0]
            continue
        # The one dimension AutoTP split: smaller in each part than in the model.
        split = [d for d, (part, full) in enumerate(zip(parts[0].shape, shape, strict=True)) if part != full]
        joined[name] = torch.cat(parts, dim=split[0]) if len(split) == 1 else parts[0]
        if joined[name].shape != shape:
            raise CheckpointError(
                f"{folder}: {len(parts)} tensor-parallel parts of {name} join to {tuple(joined[name].shape)}, not "
                f"the model's {tuple(shape)} in config.yaml: another model's checkpoint, or a rank's files are missing"
            )
    if model_config.tie_embeddings:  # the same tensor under both names, as in the model's own state dict
        joined["lm_head.weight"] = joined["embed_tokens.weight"]
    return joined
