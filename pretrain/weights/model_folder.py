"""Exported model folders: what `pretrain export` writes; what generate, attention and `--init-from` read.

`--format hf` (the default), a folder `transformers` loads unchanged:
    config.json                  GPT2Config or LlamaConfig (pretrain/weights/hf_config.py)
    generation_config.json       the tokenizer's end-of-text and padding tokens
    model.safetensors            Hugging Face's parameter names; above --max-shard-size,
                                 model-0000K-of-0000N.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json    what AutoTokenizer reads
    export_info.json             the run, checkpoint, step and dtype it came from

`--format torch`, our own parameter names, for `pretrain train --init-from`:
    model.safetensors            the state dict of model.GPT (a tied head stored once)
    model_config.json            model.GPTConfig
    tokenizer.json, export_info.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from data_pipeline.tokenizer import END_OF_TEXT, PADDING, load_tokenizer
from model import GPT, GPTConfig
from pretrain.errors import CheckpointError, ExportError
from pretrain.layout import TOKENIZER_NAME
from pretrain.weights.hf_config import (
    HF_CONFIG_NAME,
    TORCH_CONFIG_NAME,
    folder_format,
    folder_model_config,
    hf_config_dict,
)
from pretrain.weights.hf_format import from_hf_state_dict, to_hf_state_dict

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
INFO_NAME = "export_info.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def write_model_folder(
    state_dict: dict[str, torch.Tensor],
    config: GPTConfig,
    tokenizer_path: Path,
    out_dir: Path,
    info: dict,
    *,
    export_format: str = "hf",
    dtype: str = "fp32",
    max_shard_size: str = "5GB",
) -> tuple[Path, dict]:
    """Write an exported folder and return it with its export_info.json.

    The folder is written beside `out_dir` and renamed into place, replacing an
    earlier export there as a whole: never a mix of two exports' files.
    """
    check_replaceable(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        weights = {name: own_storage(tensor.to(DTYPES[dtype])) for name, tensor in state_dict.items()}
        if export_format == "hf":
            _write_hf(weights, config, tokenizer_path, staging, dtype, max_shard_size)
        else:
            _write_torch(weights, config, tokenizer_path, staging)
        tied = {"lm_head.weight"} if config.tie_embeddings else set()
        parameters = sum(tensor.numel() for name, tensor in state_dict.items() if name not in tied)
        info = info | {"format": export_format, "dtype": dtype, "parameters": parameters}
        _write_json(staging / INFO_NAME, info)
        _give_every_file_the_mode_of(staging / INFO_NAME)
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir, info


def _write_torch(weights: dict[str, torch.Tensor], config: GPTConfig, tokenizer_path: Path, out: Path) -> None:
    if config.tie_embeddings:  # tied weights are one tensor; safetensors stores each tensor once
        weights = {name: tensor for name, tensor in weights.items() if name != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in weights.items()}, out / WEIGHTS_NAME, metadata={"format": "pt"})
    _write_json(out / TORCH_CONFIG_NAME, dataclasses.asdict(config))
    shutil.copyfile(tokenizer_path, out / TOKENIZER_NAME)


def _give_every_file_the_mode_of(reference: Path) -> None:
    """Every file of the folder gets the mode a plain write gave `reference` (the umask's, e.g. 0644).

    The weights are written through temporary files (huggingface_hub, safetensors), which are private
    (0600): on a shared file system nobody else could read the model the rest of the folder offers.
    """
    mode = reference.stat().st_mode & 0o777
    for path in reference.parent.rglob("*"):
        if path.is_file():
            path.chmod(mode)


def own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, copied if it is a view into a larger buffer (as ZeRO's flat groups are).

    safetensors writes whole storages, and refuses a view of a part of one.
    """
    if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone()


def check_replaceable(out_dir: Path) -> None:
    """An export replaces an earlier export, never a folder of something else."""
    if out_dir.exists() and not (out_dir / INFO_NAME).is_file() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir}: exists and is not an exported model folder; choose another --out")


def _write_hf(
    weights: dict[str, torch.Tensor], config: GPTConfig, tokenizer_path: Path, out: Path, dtype: str, max_shard: str
) -> None:
    hf_weights = to_hf_state_dict(weights, config)
    if config.tie_embeddings:  # as save_pretrained does: the head is the token embedding
        del hf_weights["lm_head.weight"]
    # One file, or shards with an index above max_shard_size: as save_pretrained writes them.
    save_torch_state_dict(hf_weights, out, max_shard_size=max_shard, metadata={"format": "pt"})
    tokenizer = load_tokenizer(tokenizer_path)
    end, pad = tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id(PADDING)
    # GPT-2's convention: the end-of-text token also begins a text.
    tokens = {"bos_token_id": end, "eos_token_id": end, "pad_token_id": pad}
    hf_config = hf_config_dict(config) | tokens | {"dtype": HF_DTYPE_NAMES[DTYPES[dtype]]}
    if hf_config["model_type"] == "llama":
        # transformers 4.x reads the rotary base and its scaling from here; 5.x from rope_parameters.
        hf_config["rope_theta"] = config.rope_theta
        if config.rope_scaling is not None:
            hf_config["rope_scaling"] = {k: v for k, v in hf_config["rope_parameters"].items() if k != "rope_theta"}
    _write_json(out / HF_CONFIG_NAME, hf_config)
    _write_json(out / "generation_config.json", tokens)
    shutil.copyfile(tokenizer_path, out / TOKENIZER_NAME)
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": END_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": END_OF_TEXT,
            "pad_token": PADDING if pad is not None else None,
            "model_max_length": config.max_seq_len,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
        },
    )


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def folder_state_dict(folder: Path, config: GPTConfig) -> dict[str, torch.Tensor]:
    """The folder's weights as our GPT's fp32 state dict: loads with a strict load_state_dict.

    A file in place of the folder is a nanoGPT `ckpt.pt` (pretrain/weights/nanogpt.py).
    """
    if folder.is_file():
        from pretrain.weights.nanogpt import read_nanogpt_checkpoint

        return read_nanogpt_checkpoint(folder)[1]
    if (folder / INDEX_NAME).is_file():
        index = json.loads((folder / INDEX_NAME).read_text())
        weights = {}
        for shard in sorted(set(index["weight_map"].values())):
            weights |= load_file(folder / shard)
    elif (folder / WEIGHTS_NAME).is_file():
        weights = load_file(folder / WEIGHTS_NAME)
    else:
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME}; the folder's weights are missing")
    weights = {name: tensor.float() for name, tensor in weights.items()}
    if folder_format(folder) == "hf":
        return from_hf_state_dict(weights, config)
    if config.tie_embeddings:
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    return weights


def load_model_folder(folder: Path) -> tuple[GPT, Tokenizer]:
    """The model (fp32, eval mode, on the CPU) and tokenizer of an exported or Hugging Face folder."""
    config = folder_model_config(folder)
    model = GPT(config)
    try:
        model.load_state_dict(folder_state_dict(folder, config))
    except RuntimeError as err:  # torch's report of missing, unexpected or misshapen weights
        raise CheckpointError(f"{folder}: the weights do not match the folder's config: {err}") from None
    return model.eval(), load_tokenizer(folder / TOKENIZER_NAME)
