"""Positional encodings: how a token's position enters the network.

A transformer's attention is blind to order; each encoding below tells it
where a token stands. Every one is a module with the same call,

    x, rope = encoding(x, positions)

taking the token embeddings and each token's position, and returning the
embeddings the blocks read and the rotary tables the attention applies to
queries and keys (None for an encoding added to the embeddings).

`POSITIONAL_ENCODINGS` is the one table of them: the model builds
`GPTConfig.pos_encoding` from it, the FLOP count reads which parameters are
lookups from the module, and the Hugging Face mapping (pretrain/weights/)
reads `absolute` and `learned`. A new encoding is one class here and one line
in the table (and its name in `GPTConfig.pos_encoding`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import GPTConfig

Rope = tuple[torch.Tensor, torch.Tensor] | None


def sinusoidal_table(max_seq_len: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same), from the paper."""
    position = torch.arange(max_seq_len, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_seq_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table.float()


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for the given positions, in the rotate-half layout of Hugging Face Llama.

    Frequency i rotates the pair (x[i], x[i + head_dim/2]) by positions * theta^(-2i/head_dim).
    Computed in fp32 from the positions on every call: a buffer would be cast to
    bf16 with the rest of the model, and bf16 angles are off by whole radians at
    long positions. Positions of shape (seq,) give (seq, head_dim) tables;
    (batch, seq) gives (batch, 1, seq, head_dim), to broadcast over the heads.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / theta**exponents
    freqs = positions.float().unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    if positions.dim() == 2:
        emb = emb.unsqueeze(1)
    return emb.cos(), emb.sin()


class LearnedPositions(nn.Module):
    """A trained table of one vector per position, added to the token embeddings (GPT-2)."""

    absolute, learned = True, True

    def __init__(self, config: GPTConfig):
        super().__init__()
        # One parameter named `weight`, drawn as nn.Embedding draws it (so a seed gives the weights it gave when
        # this was an nn.Embedding); the model then initializes it as it does the token embeddings (model/gpt.py).
        self.weight = nn.Parameter(torch.empty(config.max_seq_len, config.n_embd))
        nn.init.normal_(self.weight)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x + F.embedding(positions, self.weight), None

    @staticmethod
    def fixed_table(config: GPTConfig) -> torch.Tensor | None:
        return None


class SinusoidalPositions(nn.Module):
    """The fixed sines and cosines of "Attention Is All You Need", added to the token embeddings."""

    absolute, learned = True, False

    def __init__(self, config: GPTConfig):
        super().__init__()
        # A buffer moves with .to() but is never trained. Not persistent: it is recomputed from the config.
        self.register_buffer("table", self.fixed_table(config), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x + self.table[positions].to(x.dtype), None

    @staticmethod
    def fixed_table(config: GPTConfig) -> torch.Tensor | None:
        return sinusoidal_table(config.max_seq_len, config.n_embd)


class RotaryPositions(nn.Module):
    """Rotary embeddings (RoFormer, Llama): queries and keys rotated by their position; nothing added to x."""

    absolute, learned = False, False

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.head_dim, self.theta = config.head_dim, config.rope_theta

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x, rope_cos_sin(positions, self.head_dim, self.theta)

    @staticmethod
    def fixed_table(config: GPTConfig) -> torch.Tensor | None:
        return None


POSITIONAL_ENCODINGS: dict[str, type[nn.Module]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "rope": RotaryPositions,
}
