"""The exported model folder: what `pretrain export` writes and `pretrain generate` reads.

model.safetensors   full weights, parameter names as in model/ (a tied head is stored once)
config.json         the model config (model.GPTConfig)
tokenizer.json      the tokenizer the model was trained with
export_info.json    the run, checkpoint and parameter count it came from
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from data_pipeline.shards import TOKENIZER_NAME
from data_pipeline.tokenizer import load_tokenizer
from model import GPT, GPTConfig
from pretrain.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
INFO_NAME = "export_info.json"


def write_model_folder(model: GPT, tokenizer_path: Path, out_dir: Path, info: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_embeddings:
        # Tied weights are one tensor; safetensors stores each tensor once.
        del weights["lm_head.weight"]
    save_file(weights, out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    (out_dir / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")
    shutil.copyfile(tokenizer_path, out_dir / TOKENIZER_NAME)
    (out_dir / INFO_NAME).write_text(json.dumps(info | {"parameters": model.num_parameters()}, indent=2) + "\n")
    return out_dir


def load_model_folder(folder: Path) -> tuple[GPT, Tokenizer]:
    """The model (in eval mode, on the CPU) and tokenizer of an exported folder."""
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}; pass a folder written by `pretrain export`")
    model = GPT(GPTConfig(**json.loads((folder / CONFIG_NAME).read_text())))
    weights: dict[str, torch.Tensor] = load_file(folder / WEIGHTS_NAME)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match config.json (missing {missing}, unexpected {unexpected})"
        )
    return model.eval(), load_tokenizer(folder / TOKENIZER_NAME)
