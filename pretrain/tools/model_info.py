"""`pretrain model info`: what a model preset costs before any run (the figures: pretrain/train/cost.py)."""

from __future__ import annotations

from model import GPTConfig
from pretrain.config.presets import model_preset_path, read_model_preset
from pretrain.errors import ConfigError
from pretrain.train.cost import memory_per_rank, model_cost


def load_preset(name: str) -> GPTConfig:
    """A preset by name (`gpt2-small`) or a YAML file of model settings."""
    settings = read_model_preset(name)
    try:
        return GPTConfig(**settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{model_preset_path(name)}: not a valid model config ({err})") from err


def describe(name: str, precision: str, zero_stage: int, world_size: int, seq_len: int | None) -> str:
    config = load_preset(name)
    cost = model_cost(config, seq_len)
    memory = memory_per_rank(cost.parameters, precision, zero_stage, world_size)
    gib = 2**30
    shape = (
        f"{name}: {config.n_layer} layers, {config.n_head} heads ({config.kv_heads} key/value), "
        f"width {config.n_embd}, FFN {config.ffn_hidden}, vocabulary {config.vocab_size:,}, "
        f"{config.pos_encoding} positions, {config.norm}, {config.mlp}"
    )
    per_rank = (
        f"memory per rank ({precision}, ZeRO stage {zero_stage}, {world_size} data-parallel rank(s)): "
        f"weights {memory['weights'] / gib:.2f} GiB, gradients {memory['gradients'] / gib:.2f} GiB, "
        f"Adam state {memory['optimizer'] / gib:.2f} GiB, total {sum(memory.values()) / gib:.2f} GiB "
        f"(activations not included)"
    )
    flops = f"FLOPs per token (training, sequence {seq_len or config.max_seq_len}): {cost.flops_per_token / 1e9:.3f} G"
    parameters = f"parameters: {cost.parameters:,} ({cost.non_embedding_parameters:,} without embeddings)"
    return f"{shape}\n{parameters}\n{flops}\n{per_rank}"
