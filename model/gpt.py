"""A decoder-only GPT, from token ids to next-token probabilities.

The network follows "Attention Is All You Need" as used by GPT-style language
models: token embeddings plus a positional encoding, N blocks of causal
multi-head self-attention and a feed-forward network, each wrapped in a
residual connection with pre-normalization, a final norm and a linear head
whose softmax is the distribution over the vocabulary.

Module names follow Hugging Face Llama (`embed_tokens`, `layers.N.self_attn.q_proj`,
`mlp.up_proj`, `input_layernorm`, ...) so that DeepSpeed AutoTP can shard the
model by name and export to Hugging Face is a renaming, not a puzzle.

This file knows nothing about how the model is parallelized, compiled or
checkpointed: that belongs to `pretrain/`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import CausalSelfAttention, KVCache
from model.config import GPTConfig
from model.layers import MLP, make_norm
from model.loss import LMHead
from model.positions import POSITIONAL_ENCODINGS, LearnedPositions


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)): pre-norm residual blocks, as in GPT-2 and Llama."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = CausalSelfAttention(config, layer)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, mask, cache=None, explicit=False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.self_attn(self.input_layernorm(x), rope, mask, cache, explicit)
        x = x + self.resid_dropout(attended)
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x))), weights


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.embed_positions = POSITIONAL_ENCODINGS[config.pos_encoding](config)  # model/positions.py
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = LMHead(config.n_embd, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # The trainer's switches: how the forward pass runs, not what it computes.
        self.activation_checkpointing = False
        self.loss_chunk_tokens = 0  # > 0: the loss in chunks of this many tokens, without logits (model/loss.py)
        # (index, count): compute the index-th of `count` equal slices of each sequence, from the whole
        # sequence's ids; the attention core must then see whole sequences (pretrain/train/sequence_parallel.py).
        self.sequence_shard: tuple[int, int] | None = None
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by
        # 1/sqrt(2 * n_layer), so the residual's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, LearnedPositions)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            # The lookup tables: the token embeddings and a learned positional encoding's.
            total -= self.embed_tokens.weight.numel() + sum(p.numel() for p in self.embed_positions.parameters())
        return total

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss); loss is the mean next-token cross-entropy when targets are given.

        With `loss_chunk_tokens` set and targets given, the logits are never
        formed whole and None is returned in their place.

        document_ids: (batch, seq), the document each token of a packed sequence
            belongs to; positions restart at each document and attention stays
            inside it.
        attention_mask: (batch, cached + seq), 1 for tokens and 0 for padding,
            as in Hugging Face: rows of different lengths, padded on the left.
        cache: keys and values of the tokens before these (generation).
        """
        x, _ = self._run(input_ids, document_ids, attention_mask, cache, explicit=False)
        if targets is not None:
            targets = self._own_slice(targets)
        if targets is not None and self.loss_chunk_tokens:
            return None, self.lm_head(x, targets, self.loss_chunk_tokens)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def attention_weights(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """softmax(Q K^T / sqrt(d)) of every layer: one (batch, heads, seq, seq) tensor per layer.

        Computed step by step, not by the fused kernel, which never forms them.
        """
        return self._run(input_ids, None, None, None, explicit=True)[1]

    def _run(self, input_ids, document_ids, attention_mask, cache, explicit) -> tuple[torch.Tensor, list]:
        """The final normalized hidden states, and each layer's attention weights when explicit."""
        past = cache.length if cache is not None else 0
        seq = input_ids.shape[1]
        if past + seq > self.config.max_seq_len:
            raise ValueError(f"sequence length {past + seq} exceeds max_seq_len {self.config.max_seq_len}")
        positions, mask = positions_and_mask(seq, past, document_ids, attention_mask, input_ids.device)
        if self.sequence_shard is not None:
            if cache is not None or explicit:
                raise ValueError("a model computing a slice of each sequence neither caches nor explains attention")
            # Positions and the mask are the whole sequence's; this rank embeds and transforms its own slice.
            input_ids, positions = self._own_slice(input_ids), self._own_slice(positions)
        x, rope = self.embed_positions(self.embed_tokens(input_ids), positions)
        x = self.embed_dropout(x)
        all_weights = []
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                # Recompute the block's activations in backward instead of storing them.
                x, weights = checkpoint(layer, x, rope, mask, use_reentrant=False)
            else:
                x, weights = layer(x, rope, mask, cache, explicit)
            all_weights.append(weights)
        if cache is not None:
            cache.length += seq
        return self.norm(x), all_weights

    def _own_slice(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the sequence (the last dimension) under `sequence_shard`; all of it otherwise."""
        if self.sequence_shard is None:
            return tensor
        index, count = self.sequence_shard
        if tensor.shape[-1] % count:
            raise ValueError(f"a sequence of {tensor.shape[-1]} tokens does not split into {count} equal slices")
        length = tensor.shape[-1] // count
        return tensor[..., index * length : (index + 1) * length]


def positions_and_mask(
    seq: int,
    past: int,
    document_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each token's position, and the boolean attention mask (None: plain causal).

    Positions are (seq,) when shared by the batch, (batch, seq) otherwise; the
    mask broadcasts to (batch, heads, queries, keys).
    """
    index = torch.arange(past, past + seq, device=device)
    if document_ids is not None:
        # Packed documents: a token sees earlier tokens of its own document only,
        # and its position counts from its document's first token in the sequence.
        first = torch.ones_like(document_ids, dtype=torch.bool)
        first[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        starts = torch.where(first, index, 0).cummax(dim=1).values
        same = document_ids.unsqueeze(2) == document_ids.unsqueeze(1)
        return index - starts, (same & causal_mask(seq, past, device)).unsqueeze(1)
    if attention_mask is not None:
        # Left padding: positions count real tokens only; padding is never attended.
        # A padding query attends itself, so no row of the softmax is empty (its output is unused).
        valid = attention_mask.bool()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        keys = torch.arange(past + seq, device=device)
        itself = keys == index.unsqueeze(1)
        mask = (causal_mask(seq, past, device) & valid[:, None, :]) | itself
        return positions, mask.unsqueeze(1)
    return index, (None if past == 0 else causal_mask(seq, past, device))


def causal_mask(seq: int, past: int, device: torch.device) -> torch.Tensor:
    """(seq, past + seq): query i (at position past + i) may attend keys 0 .. past + i."""
    return torch.ones(seq, past + seq, dtype=torch.bool, device=device).tril(diagonal=past)
