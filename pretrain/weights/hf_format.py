"""Our GPT's weights in Hugging Face `transformers` form, and back.

A model of either architecture `pretrain/weights/hf_config.py` maps (GPT-2, Llama) can
be handed to the Hugging Face ecosystem (evaluation harnesses, inference
servers) and a Hugging Face model of either kind can be loaded here, if the
parameters are renamed and reshaped:

- Llama: our module names are Llama's already (see model/gpt.py); Hugging
  Face only puts the body under `model.`.
- GPT-2: Hugging Face keeps OpenAI's names (`transformer.h.N.attn.c_attn`),
  fuses the query, key and value projections into one matrix, and stores
  every projection as a `Conv1D`, whose weight is the transpose of a Linear's:
  (in, out), not (out, in). Sinusoidal positions become GPT-2's position
  embedding table.

This module works on plain dicts of tensors and does not import
`transformers`: the tests check it against `transformers` itself
(tests/test_hf_parity.py), logits and greedy generations included.

Tied heads: the state dicts of both sides list `lm_head.weight` beside the
token embedding, as the same tensor. `to_hf_state_dict` does too, so that the
result loads with a strict `load_state_dict`; a safetensors writer has to drop
`lm_head.weight` from a tied model, as Hugging Face's `save_pretrained` does.
"""

from __future__ import annotations

import torch

from model.config import GPTConfig
from model.positions import POSITIONAL_ENCODINGS
from pretrain.errors import ExportError
from pretrain.weights.hf_config import hf_architecture

# Hugging Face buffers that are recomputed from the config, not weights: the
# causal mask of old GPT-2 checkpoints, and the rotary frequencies.
HF_BUFFERS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


def _renames(config: GPTConfig) -> tuple[dict[str, str], set[str]]:
    """Our name -> Hugging Face's for the parameters renamed one to one, and the HF names stored transposed."""
    if hf_architecture(config) == "llama":
        names = ["embed_tokens.weight", "norm.weight"]
        kinds = ["weight", "bias"] if config.bias else ["weight"]
        for i in range(config.n_layer):
            names += [f"layers.{i}.{norm}.weight" for norm in ("input_layernorm", "post_attention_layernorm")]
            projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
            projections += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
            names += [f"layers.{i}.{proj}.{kind}" for proj in projections for kind in kinds]
        return {name: f"model.{name}" for name in names} | {"lm_head.weight": "lm_head.weight"}, set()
    renames = {
        "embed_tokens.weight": "transformer.wte.weight",
        "norm.weight": "transformer.ln_f.weight",
        "norm.bias": "transformer.ln_f.bias",
        "lm_head.weight": "lm_head.weight",
    }
    if POSITIONAL_ENCODINGS[config.pos_encoding].learned:  # GPT-2's position table is our trained one
        renames["embed_positions.weight"] = "transformer.wpe.weight"
    transposed = set()
    layer = {
        "input_layernorm": "ln_1",
        "post_attention_layernorm": "ln_2",
        "self_attn.o_proj": "attn.c_proj",
        "mlp.up_proj": "mlp.c_fc",
        "mlp.down_proj": "mlp.c_proj",
    }
    for i in range(config.n_layer):
        for ours, theirs in layer.items():
            for kind in ("weight", "bias"):
                renames[f"layers.{i}.{ours}.{kind}"] = f"transformer.h.{i}.{theirs}.{kind}"
        # Conv1D weights are (in, out). c_attn, the fused query, key and value projection,
        # is not a one-to-one rename: the callers join or split it.
        for theirs in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            transposed.add(f"transformer.h.{i}.{theirs}.weight")
    return renames, transposed


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our GPT's state dict as the state dict of GPT2LMHeadModel or LlamaForCausalLM."""
    renames, transposed = _renames(config)
    state_dict = dict(state_dict)
    if config.tie_embeddings:
        state_dict.setdefault("lm_head.weight", state_dict["embed_tokens.weight"])
    hf = {theirs: state_dict[ours] for ours, theirs in renames.items()}
    fixed_table = POSITIONAL_ENCODINGS[config.pos_encoding].fixed_table(config)
    if fixed_table is not None:  # a fixed table (sinusoids) is not in our state dict, but GPT-2 has it as weights
        hf["transformer.wpe.weight"] = fixed_table
    if hf_architecture(config) == "gpt2":
        for i in range(config.n_layer):
            for kind in ("weight", "bias"):
                qkv = [state_dict[f"layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                hf[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(qkv, dim=0)
    return {name: tensor.t().contiguous() if name in transposed else tensor for name, tensor in hf.items()}


def unfused_qkv(name: str, tensor: torch.Tensor, n_embd: int) -> dict[str, torch.Tensor]:
    """`transformer.h.N.attn.c_attn.KIND` (GPT-2's and nanoGPT's query, key and value projections, stacked) as
    our three projections of layer N."""
    layer, kind = name.split(".")[2], name.split(".")[-1]
    parts = zip("qkv", tensor.split(n_embd, dim=0), strict=True)
    return {f"layers.{layer}.self_attn.{p}_proj.{kind}": part.contiguous() for p, part in parts}


def from_hf_state_dict(hf_state_dict: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel's or LlamaForCausalLM's state dict as ours: loads with a strict load_state_dict."""
    renames, transposed = _renames(config)
    hf = {name: tensor for name, tensor in hf_state_dict.items() if not name.endswith(HF_BUFFERS)}
    hf = {name: tensor.t().contiguous() if name in transposed else tensor for name, tensor in hf.items()}
    if config.tie_embeddings:  # the head is the token embedding; saved checkpoints leave it out
        hf.pop(renames.pop("lm_head.weight"), None)
    fused = []
    if hf_architecture(config) == "gpt2":
        fused = [f"transformer.h.{i}.attn.c_attn.{kind}" for i in range(config.n_layer) for kind in ("weight", "bias")]
    missing = [name for name in [*renames.values(), *fused] if name not in hf]
    if missing:
        raise ExportError(f"the Hugging Face weights lack {', '.join(missing[:5])} ({len(missing)} missing)")
    ours = {name: hf.pop(theirs) for name, theirs in renames.items()}
    if config.tie_embeddings:
        ours["lm_head.weight"] = ours["embed_tokens.weight"]  # the same tensor, as in our own state dict
    for name in fused:
        ours |= unfused_qkv(name, hf.pop(name), config.n_embd)
    if hf:
        raise ExportError(f"unexpected Hugging Face weights for this config: {', '.join(sorted(hf)[:5])}")
    return ours
