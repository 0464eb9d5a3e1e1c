"""Causal multi-head self-attention, and the key/value cache that makes generation incremental.

softmax(Q K^T / sqrt(d)) V runs through PyTorch's fused kernel
(`scaled_dot_product_attention`: flash or memory-efficient on GPU), which never
materializes the weights. `explicit=True` computes the same thing step by step
and returns the weights too, for looking at them (`pretrain attention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import GPTConfig
from model.layers import apply_rope


class KVCache:
    """Keys and values of every layer for the tokens seen so far, with room for `max_len` tokens.

    Each forward pass with the cache appends its tokens' keys and values and
    attends over all of them, so generating token t costs one token's work
    instead of t tokens'. A layer's buffers are allocated at its first append,
    in the shape of its keys: a tensor-parallel rank caches only its own heads.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0  # tokens cached; advanced by the model after all layers have appended

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's keys and values (batch, heads, seq, head_dim) for `layer`; return all so far."""
        if self.keys[layer] is None:
            batch, heads, _, head_dim = k.shape
            self.keys[layer] = k.new_zeros(batch, heads, self.max_len, head_dim)
            self.values[layer] = v.new_zeros(batch, heads, self.max_len, head_dim)
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer  # this layer's slot in a KVCache
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        kv_width = config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k_proj = nn.Linear(config.n_embd, kv_width, bias=config.bias)
        self.v_proj = nn.Linear(config.n_embd, kv_width, bias=config.bias)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # softmax(Q K^T / sqrt(d)) V over whole sequences. Sequence parallelism puts
        # its own in its place (pretrain/train/sequence_parallel.py), which gathers
        # each slice's queries, keys and values into whole sequences of fewer heads.
        self.core = attend

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        explicit: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output, attention weights or None).

        `mask` is boolean, True where a query may attend a key, broadcastable to
        (batch, heads, queries, keys); None means the plain causal mask.
        """
        batch, seq, _ = x.shape
        # (batch, seq, width) -> (batch, heads, seq, head_dim). The head counts
        # come from the shapes, so a tensor-parallel shard of the projections
        # (fewer heads per rank) runs through the same code.
        q, k, v = (
            proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        if explicit:
            y, weights = attention_with_weights(q, k, v, mask)
        else:
            y, weights = self.core(q, k, v, mask, self.dropout if self.training else 0.0), None
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, -1)), weights


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V of (batch, heads, seq, head_dim) tensors, through the fused kernel.

    `mask` as CausalSelfAttention takes it; None is the plain causal mask.
    """
    # With grouped-query attention each key/value head serves n_head / kv_heads query heads.
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout_p, enable_gqa=q.shape[1] != k.shape[1]
    )


def attention_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out: (softmax(Q K^T / sqrt(d)) V, the softmax)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is None:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    weights = scores.float().masked_fill(~mask, float("-inf")).softmax(dim=-1).to(q.dtype)
    return weights @ v, weights
