"""Our GPT's weights in Hugging Face `transformers` form, and back.

Two of the architectures `GPTConfig` can describe exist in `transformers`:
GPT-2 (learned positions, LayerNorm, tanh GELU, biases) and Llama (RoPE,
RMSNorm, SwiGLU). A model of either kind can be handed to the Hugging Face
ecosystem (evaluation harnesses, inference servers) and a Hugging Face model
of either kind can be loaded here, if the parameters are renamed and reshaped:

- Llama: our module names are Llama's already (see model/gpt.py); Hugging
  Face only puts the body under `model.`.
- GPT-2: Hugging Face keeps OpenAI's names (`transformer.h.N.attn.c_attn`),
  fuses the query, key and value projections into one matrix, and stores
  every projection as a `Conv1D`, whose weight is the transpose of a Linear's:
  (in, out), not (out, in).

This module works on plain dicts of tensors and a dict for the config, and
does not import `transformers`: the tests check it against `transformers`
itself (tests/test_hf_parity.py), logits and greedy generations included.

Tied heads: the state dicts of both sides list `lm_head.weight` beside the
token embedding, as the same tensor. `to_hf_state_dict` does too, so that the
result loads with a strict `load_state_dict`; a safetensors writer has to drop
`lm_head.weight` from a tied model, as Hugging Face's `save_pretrained` does.
"""

from __future__ import annotations

import torch

from model.config import GPTConfig
from pretrain.errors import ExportError

# The config values each Hugging Face architecture requires.
ARCHITECTURES = {
    "gpt2": {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "n_kv_heads": None},
    "llama": {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
}
# Hugging Face buffers that are recomputed from the config, not weights: the
# causal mask of old GPT-2 checkpoints, and the rotary frequencies.
HF_BUFFERS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


def hf_architecture(config: GPTConfig) -> str:
    """The Hugging Face architecture with this config's layers: "gpt2" or "llama"."""
    # n_kv_heads equal to n_head is plain multi-head attention, whether it is spelled out or not.
    fields = {**config.__dict__, "n_kv_heads": None if config.kv_heads == config.n_head else config.n_kv_heads}
    for name, required in ARCHITECTURES.items():
        if all(fields[key] == value for key, value in required.items()):
            return name
    needs = "; ".join(
        f"{title} needs "
        + ", ".join(
            f"{key}={value} (not {fields[key]})" for key, value in ARCHITECTURES[name].items() if fields[key] != value
        )
        for name, title in (("gpt2", "GPT-2"), ("llama", "Llama"))
    )
    hint = "; sinusoidal positions have no Hugging Face equivalent" if config.pos_encoding == "sinusoidal" else ""
    raise ExportError(f"no Hugging Face architecture has this model's layers: {needs}{hint}")


def hf_config_dict(config: GPTConfig) -> dict:
    """The keyword arguments of transformers' GPT2Config or LlamaConfig, with model_type and architectures.

    The special token ids belong to the tokenizer, not to GPTConfig: they are
    None here (Hugging Face's defaults are GPT-2's and Llama's own) for the
    caller that knows the tokenizer to fill in.
    """
    common = {"vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings}
    common |= {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if hf_architecture(config) == "gpt2":
        return common | {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_positions": config.max_seq_len,
            "n_embd": config.n_embd,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.ffn_hidden,
            "activation_function": "gelu_new",  # the tanh approximation, as in model/layers.py
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
        }
    return common | {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": config.n_embd,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,  # Llama has no residual or embedding dropout
        "hidden_act": "silu",
    }


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
        "embed_positions.weight": "transformer.wpe.weight",
        "norm.weight": "transformer.ln_f.weight",
        "norm.bias": "transformer.ln_f.bias",
        "lm_head.weight": "lm_head.weight",
    }
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
    if hf_architecture(config) == "gpt2":
        for i in range(config.n_layer):
            for kind in ("weight", "bias"):
                qkv = [state_dict[f"layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                hf[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(qkv, dim=0)
    return {name: tensor.t().contiguous() if name in transposed else tensor for name, tensor in hf.items()}


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
    for name in fused:  # transformer.h.N.attn.c_attn.KIND: the query, key and value projections, stacked
        layer, kind = name.split(".")[2], name.split(".")[-1]
        for p, part in zip("qkv", hf.pop(name).split(config.n_embd, dim=0), strict=True):
            ours[f"layers.{layer}.self_attn.{p}_proj.{kind}"] = part.contiguous()
    if hf:
        raise ExportError(f"unexpected Hugging Face weights for this config: {', '.join(sorted(hf)[:5])}")
    return ours
