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

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import GPTConfig, RopeScaling

Rope = tuple[torch.Tensor, torch.Tensor] | None


def sinusoidal_table(max_seq_len: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same), from the paper."""
    position = torch.arange(max_seq_len, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_seq_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table.float()


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for the given positions, in the rotate-half layout of Hugging Face Llama.

    Frequency i rotates the pair (x[i], x[i + head_dim/2]) by positions * theta^(-2i/head_dim),
    its frequency changed by `scaling` where there is one (`rope_frequencies`).
    Computed in fp32 from the positions on every call: a buffer would be cast to
    bf16 with the rest of the model, and bf16 angles are off by whole radians at
    long positions. Positions of shape (seq,) give (seq, head_dim) tables;
    (batch, seq) gives (batch, 1, seq, head_dim), to broadcast over the heads.
    """
    inv_freq, attention_factor = rope_frequencies(positions, head_dim, theta, scaling)
    freqs = positions.float().unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    if positions.dim() == 2:
        emb = emb.unsqueeze(1)
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rope_frequencies(
    positions: torch.Tensor, head_dim: int, theta: float, scaling: RopeScaling | None
) -> tuple[torch.Tensor, float]:
    """Each rotary pair's frequency, and the factor on the tables (YaRN's attention temperature; else 1).

    Stretching the context by `factor` (Hugging Face's `rope_parameters`, to
    the same floats, so that an export gives our logits):
    - linear (position interpolation): every frequency divided by the factor;
    - dynamic (NTK-aware): theta raised once the positions pass the trained
      context, more the further they go; the same frequencies below it;
    - llama3: long wavelengths (beyond the trained context / low_freq_factor)
      divided by the factor, short ones (below / high_freq_factor) kept, the
      ones between blended: the fine positional detail survives;
    - yarn: the same idea by rotations per trained context (beta_fast,
      beta_slow), and the tables scaled by 0.1 ln(factor) + 1.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    if scaling is None:
        return 1.0 / theta**exponents, 1.0
    factor, original = scaling.factor, scaling.original_max_seq_len
    if scaling.type == "linear":
        return 1.0 / theta**exponents / factor, 1.0
    if scaling.type == "dynamic":
        # The longest position of this call, on the device: no host synchronization.
        length = torch.clamp(positions.max() + 1, min=original).float()
        base = theta * ((factor * length / original) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / base**exponents, 1.0
    inv_freq = 1.0 / theta**exponents
    if scaling.type == "llama3":
        wavelength = 2 * math.pi / inv_freq
        scaled = torch.where(wavelength > original / scaling.low_freq_factor, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        between = (wavelength >= original / scaling.high_freq_factor) & (
            wavelength <= original / scaling.low_freq_factor
        )
        return torch.where(between, blended, scaled), 1.0

    # yarn
    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(scaling.beta_fast)), 0)
    high = min(math.ceil(correction_dim(scaling.beta_slow)), head_dim - 1)
    ramp = torch.clamp(
        (torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32) - low) / max(high - low, 1e-3), 0, 1
    )
    kept = 1 - ramp  # 1: the frequency as trained (extrapolated), 0: divided by the factor (interpolated)
    inv_freq = inv_freq / factor * (1 - kept) + inv_freq * kept
    return inv_freq, 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


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
        self.head_dim, self.theta, self.scaling = config.head_dim, config.rope_theta, config.rope_scaling

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x, rope_cos_sin(positions, self.head_dim, self.theta, self.scaling)

    @staticmethod
    def fixed_table(config: GPTConfig) -> torch.Tensor | None:
        return None


POSITIONAL_ENCODINGS: dict[str, type[nn.Module]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "rope": RotaryPositions,
}
