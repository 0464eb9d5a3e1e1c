"""Which Hugging Face architecture our GPTConfig is, and its `config.json`, both ways. No torch here.

Two of the architectures `GPTConfig` can describe exist in `transformers`:
GPT-2 (learned positions, LayerNorm, GELU tanh or exact, biases) and Llama (RoPE,
RMSNorm, SwiGLU). The paper's sinusoidal positions export as GPT-2: the fixed
table becomes GPT-2's position embedding, which then holds the same numbers.
The weights' side of the mapping is pretrain/weights/hf_format.py.

Also here: the GPTConfig of an exported folder of either format
(pretrain/weights/model_folder.py), read without torch, since the config loader
needs it for `train.init_from`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from model.config import GPTConfig, RopeScaling
from pretrain.errors import CheckpointError, ExportError

HF_CONFIG_NAME = "config.json"
TORCH_CONFIG_NAME = "model_config.json"

# The config values each Hugging Face architecture requires (a tuple: any of them), besides its positions.
ARCHITECTURES = {
    "gpt2": {"norm": ("layernorm",), "mlp": ("gelu", "gelu_exact"), "bias": (True,), "n_kv_heads": (None,)},
    "llama": {"norm": ("rmsnorm",), "mlp": ("swiglu",)},
}
# GPT-2 adds a table of positions to the token embeddings (an absolute encoding: learned, or the paper's
# sinusoids exported as one); Llama rotates queries and keys. Which encodings are which: model/positions.py.
ABSOLUTE_POSITIONS = {"gpt2": True, "llama": False}
TITLES = {"gpt2": "GPT-2", "llama": "Llama"}
# GPT-2's activation_function for each of our GELUs (model/layers.py): the tanh approximation, or the exact one.
HF_GELU = {"gelu": "gelu_new", "gelu_exact": "gelu"}
GELU_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}
# Llama's rope_parameters for each RopeScaling type (model/config.py): Hugging Face's name of each of our fields.
HF_ROPE_KEYS = {
    "linear": {"factor": "factor"},
    "dynamic": {"factor": "factor"},
    "llama3": {
        "factor": "factor",
        "original_max_seq_len": "original_max_position_embeddings",
        "low_freq_factor": "low_freq_factor",
        "high_freq_factor": "high_freq_factor",
    },
    "yarn": {
        "factor": "factor",
        "original_max_seq_len": "original_max_position_embeddings",
        "beta_fast": "beta_fast",
        "beta_slow": "beta_slow",
    },
}
# Settings of Hugging Face's YaRN that ours has only at their defaults (DeepSeek's temperatures, untruncated ramps).
HF_YARN_ONLY = {"attention_factor": (None,), "mscale": (None,), "mscale_all_dim": (None,), "truncate": (True,)}


@functools.cache
def architectures() -> dict[str, dict[str, tuple]]:
    """ARCHITECTURES with the positional encodings each takes, from the model's table of them."""
    from model.positions import POSITIONAL_ENCODINGS  # torch: imported once a model is mapped, not by the config

    return {
        name: {
            "pos_encoding": tuple(
                key for key, encoding in POSITIONAL_ENCODINGS.items() if encoding.absolute == absolute
            ),
            **ARCHITECTURES[name],
        }
        for name, absolute in ABSOLUTE_POSITIONS.items()
    }


def hf_architecture(config: GPTConfig) -> str:
    """The Hugging Face architecture with this config's layers: "gpt2" or "llama"."""
    # n_kv_heads equal to n_head is plain multi-head attention, whether it is spelled out or not.
    fields = {**config.__dict__, "n_kv_heads": None if config.kv_heads == config.n_head else config.n_kv_heads}
    for name, required in architectures().items():
        if all(fields[key] in allowed for key, allowed in required.items()):
            return name
    needs = "; ".join(
        f"{TITLES[name]} needs "
        + ", ".join(
            f"{key}={'/'.join(map(str, allowed))} (not {fields[key]})"
            for key, allowed in required.items()
            if fields[key] not in allowed
        )
        for name, required in architectures().items()
    )
    raise ExportError(f"no Hugging Face architecture has this model's layers: {needs}")


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
            "activation_function": HF_GELU[config.mlp],
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
        "max_position_embeddings": hf_max_positions(config),
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": hf_rope_parameters(config),
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,  # Llama has no residual or embedding dropout
        "hidden_act": "silu",
    }


def hf_rope_parameters(config: GPTConfig) -> dict:
    """Llama's `rope_parameters`: the rotary base, and how positions stretch past the trained context."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    scaling = config.rope_scaling
    if scaling is None:
        return rope
    keys = HF_ROPE_KEYS[scaling.type]
    return rope | {"rope_type": scaling.type} | {theirs: getattr(scaling, ours) for ours, theirs in keys.items()}


def hf_max_positions(config: GPTConfig) -> int:
    """Llama's `max_position_embeddings`: our context, except under dynamic scaling, where transformers reads it
    as the trained context that the scaling starts from."""
    scaling = config.rope_scaling
    return scaling.original_max_seq_len if scaling and scaling.type == "dynamic" else config.max_seq_len


def rope_scaling_from_hf(rope: dict, max_positions: int, source: str) -> tuple[RopeScaling | None, int]:
    """Our RopeScaling and context for a Llama's `rope_parameters` and `max_position_embeddings`."""
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    _require({"rope_type": rope_type}, source, rope_type=("default", *HF_ROPE_KEYS))
    if rope_type == "default":
        return None, max_positions
    if rope_type == "yarn":
        _require(rope, source, **HF_YARN_ONLY)
    fields = {ours: rope[theirs] for ours, theirs in HF_ROPE_KEYS[rope_type].items() if theirs in rope}
    if rope_type == "dynamic":  # transformers' trained context; it reads any length, ours up to factor times it
        scaling = RopeScaling(type="dynamic", original_max_seq_len=max_positions, **fields)
        return scaling, int(max_positions * scaling.factor)
    return RopeScaling(type=rope_type, **fields), max_positions


def gpt_config_from_hf(hf: dict, source: str) -> GPTConfig:
    """Our GPTConfig for a Hugging Face GPT-2 or Llama `config.json` (as a dict); `source` names it in errors."""
    try:
        return _gpt_config_from_hf(hf, source)
    except KeyError as err:
        raise ExportError(f"{source}: no {err.args[0]}; a {hf.get('model_type')} config.json needs it") from None


def _gpt_config_from_hf(hf: dict, source: str) -> GPTConfig:
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        _require(hf, source, activation_function=tuple(GELU_FROM_HF), scale_attn_weights=(True,))
        _require(hf, source, scale_attn_by_inverse_layer_idx=(False,), reorder_and_upcast_attn=(False,))
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            max_seq_len=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            ffn_hidden_size=hf.get("n_inner") or 4 * hf["n_embd"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            dropout=hf.get("resid_pdrop", 0.0),
            mlp=GELU_FROM_HF[hf.get("activation_function", "gelu_new")],
        )
    if model_type == "llama":
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_scaling, max_seq_len = rope_scaling_from_hf(rope, hf["max_position_embeddings"], source)
        _require(hf, source, hidden_act=("silu",))
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            raise ExportError(
                f"{source}: attention_bias and mlp_bias differ; our Llama has biases everywhere or nowhere"
            )
        config = GPTConfig(
            vocab_size=hf["vocab_size"],
            max_seq_len=max_seq_len,
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_embd=hf["hidden_size"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            pos_encoding="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=hf.get("attention_bias", False),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            ffn_hidden_size=hf["intermediate_size"],
            dropout=hf.get("attention_dropout", 0.0),
        )
        if hf.get("head_dim", config.head_dim) != config.head_dim:
            raise ExportError(f"{source}: head_dim = {hf['head_dim']}; ours is hidden_size / num_attention_heads")
        return config
    raise ExportError(f"{source}: model_type {model_type!r} is not supported; supported are gpt2 and llama")


def _require(hf: dict, source: str, **allowed: tuple) -> None:
    """Raise if a setting that our GPT cannot reproduce has another value than the ones it can."""
    for key, values in allowed.items():
        if key in hf and hf[key] not in values:
            raise ExportError(f"{source}: {key} = {hf[key]!r} is not supported; our GPT has {values[0]!r}")


def folder_format(folder: Path) -> str:
    """ "hf" or "torch", from the folder's config file; an error that says what to pass otherwise."""
    if (folder / HF_CONFIG_NAME).is_file():
        return "hf"
    if (folder / TORCH_CONFIG_NAME).is_file():
        return "torch"
    raise CheckpointError(
        f"{folder}: not an exported model folder (no {HF_CONFIG_NAME} or {TORCH_CONFIG_NAME}); "
        f"pass a folder written by `pretrain export` or a Hugging Face GPT-2 or Llama folder"
    )


def folder_model_config(folder: Path) -> GPTConfig:
    """The GPTConfig of an exported folder, of either format, or of a Hugging Face GPT-2 or Llama folder."""
    if folder_format(folder) == "torch":
        return GPTConfig(**json.loads((folder / TORCH_CONFIG_NAME).read_text()))
    return gpt_config_from_hf(json.loads((folder / HF_CONFIG_NAME).read_text()), str(folder / HF_CONFIG_NAME))
