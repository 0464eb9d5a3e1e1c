"""From a sharded DeepSpeed checkpoint to a self-contained model folder (see model_folder.py),
or straight to a model in memory for `pretrain generate` and `pretrain attention`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer

from data_pipeline.shards import TOKENIZER_NAME
from data_pipeline.tokenizer import load_tokenizer
from model import GPT
from pretrain import checkpoint
from pretrain.config import Config, load_config
from pretrain.errors import CheckpointError
from pretrain.model_folder import WEIGHTS_NAME, load_model_folder, write_model_folder


def consolidated_state_dict(config: Config, run_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 weights, gathered from the shards of every rank, in one process."""
    directory = checkpoint.checkpoint_dir(run_dir)
    if config.parallel.zero_stage == 0:
        # Without ZeRO every rank holds the whole model; rank 0's file has it.
        states = torch.load(directory / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return states["module"]
    # DeepSpeed reports on stdout (its accelerator when imported, its progress
    # while merging), but a command's stdout is its result: a generated text, a
    # table. Imported here, so that reading an exported folder does not pay for it.
    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag)


def load_checkpoint_model(run_dir: Path, tag: str | None = None) -> tuple[GPT, str]:
    """The model of a run's checkpoint (the latest unless `tag`), on the CPU, and the tag."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml); pass the folder `pretrain train` printed")
    config = load_config(config_path)
    tag = tag or checkpoint.latest_tag(run_dir)
    if tag is None or not (checkpoint.checkpoint_dir(run_dir) / tag).is_dir():
        raise CheckpointError(f"{checkpoint.checkpoint_dir(run_dir)}: no checkpoint {tag or ''} to load")
    model = GPT(config.model)
    model.load_state_dict(consolidated_state_dict(config, run_dir, tag))  # strict: the weights are complete
    return model, tag


def export(run_dir: Path, out_dir: Path, tag: str | None = None) -> Path:
    model, tag = load_checkpoint_model(run_dir, tag)
    info = {"run_dir": str(run_dir.resolve()), "checkpoint_tag": tag}
    return write_model_folder(model, run_dir / TOKENIZER_NAME, out_dir, info)


def load_trained_model(path: Path, tag: str | None = None) -> tuple[GPT, Tokenizer]:
    """The model (eval mode, CPU) and tokenizer of an exported folder or of a run folder's checkpoint."""
    if (path / WEIGHTS_NAME).is_file():
        return load_model_folder(path)
    if not (path / "config.yaml").is_file():
        raise CheckpointError(
            f"{path}: neither an exported model folder (no {WEIGHTS_NAME}) nor a run folder (no config.yaml); "
            f"pass the folder `pretrain export` or `pretrain train` printed"
        )
    model, _ = load_checkpoint_model(path, tag)
    return model.eval(), load_tokenizer(path / TOKENIZER_NAME)
