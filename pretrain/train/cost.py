"""What a model costs, from its config alone: parameters, FLOPs per token, memory per rank, MFU.

Parameters are counted on PyTorch's meta device (exact, no memory). FLOPs per
token follow PaLM's count, as nanoGPT's MFU does: 6 per matrix parameter
(forward and backward) plus 12 * n_layer * n_embd * seq_len for attention.
Memory per rank follows the ZeRO paper's accounting for Adam: bf16 mixed
precision keeps 2 bytes of weights, 2 of gradients and 12 of optimizer state
(fp32 master weights, momentum, variance) per parameter; fp32 keeps 4, 4
and 8. ZeRO stage 1 shards the optimizer state across the data-parallel
ranks, stage 2 also the gradients, stage 3 also the weights.

Model FLOPs utilization (MFU) divides the FLOPs a step needs by what the chip
could do in that time at its dense bf16 peak: the datasheet figure without
2:4 sparsity, which doubles the number and halves the MFU's honesty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import GPT, GPTConfig

BYTES_PER_PARAM = {"bf16": (2, 2, 12), "fp32": (4, 4, 8)}  # weights, gradients, optimizer state
# Dense bf16 peak FLOP/s by the name CUDA reports, most specific first (the
# PCIe H100 is clocked lower than the SXM one). A chip not listed has no MFU.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


@dataclass
class ModelCost:
    parameters: int
    embedding_parameters: int  # the lookup tables: token and position embeddings
    matrix_parameters: int  # the parameters a token multiplies through (the head included)
    flops_per_token: int

    @property
    def non_embedding_parameters(self) -> int:
        return self.parameters - self.embedding_parameters


def model_cost(config: GPTConfig, seq_len: int | None = None) -> ModelCost:
    with torch.device("meta"):
        model = GPT(config)
    parameters = sum(p.numel() for p in model.parameters())
    # The lookup tables: the token embeddings, and a positional encoding's parameters (a learned table).
    lookups = [model.embed_tokens.weight.numel(), sum(p.numel() for p in model.embed_positions.parameters())]
    # A tied head is the token embedding used as a matrix: its FLOPs count once.
    lookup_only = sum(lookups) - (model.embed_tokens.weight.numel() if config.tie_embeddings else 0)
    matrix = parameters - lookup_only
    seq_len = seq_len or config.max_seq_len
    flops = 6 * matrix + 12 * config.n_layer * config.n_embd * seq_len
    return ModelCost(parameters, sum(lookups), matrix, flops)


def memory_per_rank(parameters: int, precision: str, zero_stage: int, world_size: int) -> dict[str, float]:
    """Bytes per rank for weights, gradients and optimizer state."""
    weights, gradients, optimizer = (parameters * b for b in BYTES_PER_PARAM[precision])
    if precision == "fp32" and zero_stage >= 1:
        # DeepSpeed's ZeRO optimizers keep an fp32 master copy of the weights even for an fp32 model.
        optimizer += 4 * parameters
    return {
        "weights": weights / (world_size if zero_stage >= 3 else 1),
        "gradients": gradients / (world_size if zero_stage >= 2 else 1),
        "optimizer": optimizer / (world_size if zero_stage >= 1 else 1),
    }


def activation_bytes(
    config: GPTConfig, tokens: int, value_bytes: int, loss_chunk_tokens: int = 0, sequence_parallel: int = 1
) -> dict[str, float]:
    """Bytes of activations a rank holds for `tokens` tokens (its micro-batch, or under sequence parallelism
    its slice of it), without activation checkpointing: `saved`, what autograd keeps from forward to backward,
    and `peak`, with the head's logits of one chunk at their largest (docs/parallelism.md).

    Per token and layer, what autograd saves: each norm's input and output
    (RMSNorm also its normalized fp32 copy); the queries, keys and values
    (RoPE applied) and the attention's output, which the fused kernel
    keeps and the output projection reads in place (under sequence
    parallelism, gathered back into the slice, a copy of its own); GELU's
    input and output, or SwiGLU's gate, up, activated gate and product. Then
    the last layer's output and, from the loss in chunks, the gradients of
    the hidden states and of the head's weight (model/loss.py), or without
    chunks the logits and their log-softmax. The fused attention keeps no
    seq x seq weights; a document mask adds one byte per pair of a
    sequence's tokens, which no split divides.
    """
    h, f, kv = config.n_embd, config.ffn_hidden, config.kv_heads * config.head_dim
    norm = 3 * h if config.norm == "rmsnorm" else 2 * h
    attention = 2 * h + 2 * kv + (h if sequence_parallel > 1 else 0)
    mlp = 4 * f if config.mlp == "swiglu" else 2 * f
    per_token = config.n_layer * (2 * norm + attention + mlp) + 2 * h
    logits = min(loss_chunk_tokens, tokens) if loss_chunk_tokens else tokens
    head = config.vocab_size * h if loss_chunk_tokens else 2 * tokens * config.vocab_size
    saved = (tokens * per_token + head) * value_bytes
    # A chunk's logits and the softmax computed from them, alive together.
    return {"saved": saved, "peak": saved + 2 * logits * config.vocab_size * value_bytes}


def peak_bf16_flops(device_name: str) -> float | None:
    """The chip's dense bf16 peak, or None for a chip not in the table (no MFU rather than a wrong one)."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def mfu(tokens_per_s: float, flops_per_token: int, device_name: str, devices: int = 1) -> float | None:
    """The fraction of `devices` chips' peak that training at `tokens_per_s` uses."""
    peak = peak_bf16_flops(device_name)
    return None if peak is None else tokens_per_s * flops_per_token / (peak * devices)
