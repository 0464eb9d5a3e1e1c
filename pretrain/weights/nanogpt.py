"""A nanoGPT checkpoint (`ckpt.pt`, as its train.py saves it) as our GPT: its config and its weights.

nanoGPT's GPT is ours with one choice of each option: learned positions,
LayerNorm, the exact GELU (`nn.GELU()`, our `mlp: gelu_exact`), biases or none
everywhere (`bias`), a head tied to the token embedding. Its parameters keep
OpenAI's GPT-2 names (`transformer.h.N.attn.c_attn`) as `nn.Linear`s, so the
only reshaping is the fused query, key and value projection, split in three.

The file is a pickle; it is read with `weights_only=True` (tensors and plain
data, never code), which the dict nanoGPT saves needs nothing more than.
`train.init_from` takes the file as it is; `pretrain export --from-nanogpt`
writes it as an exported folder (with a tokenizer), which `pretrain generate`
and `transformers` load too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.config import GPTConfig
from pretrain.errors import ExportError
from pretrain.weights.checkpoint_files import load_torch_file
from pretrain.weights.hf_format import unfused_qkv

# torch.compile wraps the module; a checkpoint of a compiled model has every name under this prefix.
COMPILED_PREFIX = "_orig_mod."
# nanoGPT's causal mask, a buffer it keeps when PyTorch has no flash attention: not a weight.
MASK_SUFFIX = ".attn.bias"
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
LAYER_RENAMES = {
    "ln_1": "input_layernorm",
    "ln_2": "post_attention_layernorm",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.c_fc": "mlp.up_proj",
    "mlp.c_proj": "mlp.down_proj",
}


def read_nanogpt_checkpoint(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor], dict]:
    """Our GPTConfig and state dict for a nanoGPT `ckpt.pt`, and what else it says (iter_num, best_val_loss)."""
    saved = _load(path)
    config = _config(saved["model_args"], path)
    about = {key: _plain(saved[key]) for key in ("iter_num", "best_val_loss") if key in saved}
    return config, from_nanogpt_state_dict(saved["model"], config, path), about


def nanogpt_model_config(path: Path) -> GPTConfig:
    """The GPTConfig of a nanoGPT `ckpt.pt` (for `train.init_from`); the weights stay on disk (memory-mapped)."""
    return _config(_load(path, mmap=True)["model_args"], path)


def _load(path: Path, mmap: bool = False) -> dict:
    if not path.is_file():
        raise ExportError(f"{path}: no such file; pass the ckpt.pt nanoGPT's train.py wrote in its out_dir")
    saved = load_torch_file(path, mmap=mmap)
    if not isinstance(saved, dict) or "model" not in saved or "model_args" not in saved:
        raise ExportError(f"{path}: not a nanoGPT checkpoint (a dict with 'model' and 'model_args')")
    return saved


def _config(args: dict, path: Path) -> GPTConfig:
    missing = [key for key in MODEL_ARGS if key not in args]
    if missing:
        raise ExportError(f"{path}: model_args lacks {', '.join(missing)}; nanoGPT's train.py saves all of them")
    return GPTConfig(
        vocab_size=args["vocab_size"],
        max_seq_len=args["block_size"],
        n_layer=args["n_layer"],
        n_head=args["n_head"],
        n_embd=args["n_embd"],
        pos_encoding="learned",
        norm="layernorm",
        mlp="gelu_exact",
        bias=args["bias"],
        dropout=args.get("dropout", 0.0),
        tie_embeddings=True,
        norm_eps=1e-5,  # nanoGPT's LayerNorm uses F.layer_norm's default
    )


def from_nanogpt_state_dict(state: dict, config: GPTConfig, source: Path) -> dict[str, torch.Tensor]:
    """nanoGPT's parameter names and shapes as ours: loads with a strict load_state_dict."""
    theirs = {name.removeprefix(COMPILED_PREFIX): tensor for name, tensor in state.items()}
    theirs = {name: tensor for name, tensor in theirs.items() if not name.endswith(MASK_SUFFIX)}
    kinds = ("weight", "bias") if config.bias else ("weight",)
    renames = {"transformer.wte.weight": "embed_tokens.weight", "transformer.wpe.weight": "embed_positions.weight"}
    renames |= {f"transformer.ln_f.{kind}": f"norm.{kind}" for kind in kinds}
    for i in range(config.n_layer):
        for old, new in LAYER_RENAMES.items():
            renames |= {f"transformer.h.{i}.{old}.{kind}": f"layers.{i}.{new}.{kind}" for kind in kinds}
    fused = [f"transformer.h.{i}.attn.c_attn.{kind}" for i in range(config.n_layer) for kind in kinds]
    missing = [name for name in [*renames, *fused] if name not in theirs]
    if missing:
        raise ExportError(f"{source}: the weights lack {', '.join(missing[:5])} ({len(missing)} missing)")
    ours = {new: theirs.pop(old) for old, new in renames.items()}
    for name in fused:
        ours |= unfused_qkv(name, theirs.pop(name), config.n_embd)
    theirs.pop("lm_head.weight", None)  # tied: the token embedding itself
    ours["lm_head.weight"] = ours["embed_tokens.weight"]
    if theirs:
        raise ExportError(f"{source}: weights nanoGPT's GPT does not have: {', '.join(sorted(theirs)[:5])}")
    return ours


def _plain(value):
    """A saved number (nanoGPT keeps best_val_loss as a 0-d tensor) as a JSON value."""
    return value.item() if isinstance(value, torch.Tensor) else value
