"""The GPT's configuration: a plain dataclass, importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    max_seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    pos_encoding: Literal["learned", "sinusoidal", "rope"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # Raised as ValueError so that a config schema wrapping this dataclass
        # reports it with the offending key path.
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_head ({self.n_head}) must divide n_embd ({self.n_embd}); "
                f"allowed n_head values: {_divisors(self.n_embd)}"
            )
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"rope needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        # SwiGLU has three matrices instead of two; 2/3 of 4x keeps the
        # parameter count equal to the GELU MLP (as in Llama), rounded to 64.
        if self.mlp == "swiglu":
            return 64 * math.ceil(int(8 * self.n_embd / 3) / 64)
        return 4 * self.n_embd


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
