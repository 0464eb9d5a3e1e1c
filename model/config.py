"""The GPT's configuration: a plain dataclass, importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class RopeScaling:
    """How rotary positions stretch past the context a model was trained at, as Hugging Face's `rope_parameters`
    define each `type` (model/positions.py says what each does).

    `factor`: how many times that context the model now reads. `original_max_seq_len`: the context it was
    trained at (llama3, yarn and dynamic; linear needs none).
    """

    type: Literal["linear", "dynamic", "llama3", "yarn"]
    factor: float
    original_max_seq_len: int | None = None
    low_freq_factor: float = 1.0  # llama3: wavelengths above original / this are scaled by the factor...
    high_freq_factor: float = 4.0  # ...below original / this are kept, in between blended
    beta_fast: float = 32.0  # yarn: the rotations per context above which a frequency is kept...
    beta_slow: float = 1.0  # ...and below which it is scaled, in between blended

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"rope_scaling.factor must be at least 1, got {self.factor}")
        if self.type != "linear" and not self.original_max_seq_len:
            raise ValueError(f"rope_scaling.original_max_seq_len is needed by {self.type}: the trained context")


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    max_seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_heads: int | None = None  # grouped-query attention: fewer key/value heads; None means n_head
    pos_encoding: Literal["learned", "sinusoidal", "rope"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "gelu_exact", "swiglu"] = "gelu"  # gelu: the tanh approximation (GPT-2)
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # context extension of a rotary model: None keeps the trained context
    norm_eps: float = 1e-5
    ffn_hidden_size: int | None = None  # None: 4 x n_embd (gelu, gelu_exact), or about 8/3 x n_embd (swiglu)

    def __post_init__(self) -> None:
        # Raised as ValueError so that a config schema wrapping this dataclass
        # reports it with the offending key path.
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_head ({self.n_head}) must divide n_embd ({self.n_embd}); "
                f"allowed n_head values: {_divisors(self.n_embd)}"
            )
        if self.n_head % self.kv_heads != 0:
            raise ValueError(
                f"n_kv_heads ({self.kv_heads}) must divide n_head ({self.n_head}); "
                f"allowed n_kv_heads values: {_divisors(self.n_head)}"
            )
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"rope needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}")
        if isinstance(self.rope_scaling, dict):  # read back from JSON (an exported folder's config)
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.rope_scaling is not None and self.pos_encoding != "rope":
            raise ValueError(f"rope_scaling stretches rotary positions; pos_encoding is {self.pos_encoding}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_head

    @property
    def ffn_hidden(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        # SwiGLU has three matrices instead of two; 2/3 of 4x keeps the
        # parameter count equal to the GELU MLP (as in Llama), rounded to 64.
        if self.mlp == "swiglu":
            return 64 * math.ceil(int(8 * self.n_embd / 3) / 64)
        return 4 * self.n_embd


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
