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

from model.config import GPTConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32: the mean of squares underflows easily in bf16.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def sinusoidal_table(max_seq_len: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same), from the paper."""
    position = torch.arange(max_seq_len, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_seq_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table.float()


def rope_cos_sin(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables in the rotate-half layout of Hugging Face Llama."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.kv_heads = config.n_head, config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        kv_width = config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k_proj = nn.Linear(config.n_embd, kv_width, bias=config.bias)
        self.v_proj = nn.Linear(config.n_embd, kv_width, bias=config.bias)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        batch, seq, width = x.shape
        # (batch, seq, width) -> (batch, heads, seq, head_dim)
        q = self.q_proj(x).view(batch, seq, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (
            proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
            for proj in (self.k_proj, self.v_proj)
        )
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # softmax(QK^T / sqrt(d)) V with the causal mask, through PyTorch's
        # fused kernels (flash / memory-efficient on GPU). With grouped-query
        # attention each key/value head serves n_head / kv_heads query heads.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.n_head,
        )
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, width))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(config.n_embd, config.ffn_hidden, bias=config.bias)
        self.up_proj = nn.Linear(config.n_embd, config.ffn_hidden, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = CausalSelfAttention(config)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.resid_dropout(self.self_attn(self.input_layernorm(x), rope))
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_encoding == "learned":
            self.embed_positions = nn.Embedding(config.max_seq_len, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            # A fixed table, not a parameter: a buffer moves with .to() but is
            # never trained. Not persistent: it is recomputed from the config.
            self.register_buffer("sinusoids", sinusoidal_table(config.max_seq_len, config.n_embd), persistent=False)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.activation_checkpointing = False
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
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embed_tokens.weight.numel()
            if hasattr(self, "embed_positions"):
                total -= self.embed_positions.weight.numel()
        return total

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        """Return (logits, loss); loss is the mean next-token cross-entropy when targets are given."""
        seq = input_ids.shape[1]
        if seq > self.config.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds max_seq_len {self.config.max_seq_len}")
        x = self.embed_tokens(input_ids)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.embed_positions(torch.arange(seq, device=input_ids.device))
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.sinusoids[:seq]
        else:
            cos, sin = rope_cos_sin(seq, self.config.head_dim, self.config.rope_theta)
            rope = (cos.to(x.device, x.dtype), sin.to(x.device, x.dtype))
        x = self.embed_dropout(x)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                # Recompute the block's activations in backward instead of storing them.
                x = checkpoint(layer, x, rope, use_reentrant=False)
            else:
                x = layer(x, rope)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        stop_token: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample a continuation of each row of `input_ids` (batch, seq), one token at a time.

        temperature 0 means greedy decoding.
        """
        for _ in range(max_new_tokens):
            context = input_ids[:, -self.config.max_seq_len :]
            logits, _ = self(context)
            logits = logits[:, -1, :].float()
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator)
            input_ids = torch.cat((input_ids, next_token), dim=1)
            if stop_token is not None and bool((next_token == stop_token).all()):
                break
        return input_ids
