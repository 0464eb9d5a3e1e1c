"""Sampling continuations from a GPT: a key/value cache, temperature, top-k, top-p and stop tokens.

Prompts of different lengths are batched by padding them on the left, so that
every row's next token is at the same index; the attention mask keeps the
padding out of attention and out of the positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.attention import KVCache
from model.gpt import GPT


@torch.no_grad()
def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """The tokens sampled after each prompt: up to `max_new_tokens`, ending before a stop token.

    temperature 0 is greedy decoding. Without the cache every step runs the
    whole sequence again (the reference the cache is tested against).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    max_new_tokens = min(max_new_tokens, model.config.max_seq_len - longest)
    device = next(model.parameters()).device
    tokens = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(tokens)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) :] = torch.tensor(prompt, device=device)
        attention_mask[row, longest - len(prompt) :] = 1
    cache = KVCache(model.config.n_layer, longest + max_new_tokens) if use_cache else None
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new_tokens = []
    step_input = tokens
    for _ in range(max_new_tokens):
        if use_cache:
            logits, _ = model(step_input, attention_mask=attention_mask, cache=cache)
        else:
            logits, _ = model(tokens, attention_mask=attention_mask)
        next_token = sample(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
        finished |= torch.isin(next_token, stop)
        new_tokens.append(torch.where(finished, -1, next_token))
        if bool(finished.all()):
            break
        step_input = next_token.unsqueeze(1)
        tokens = torch.cat((tokens, step_input), dim=1)
        attention_mask = torch.cat((attention_mask, torch.ones_like(step_input)), dim=1)
    if not new_tokens:
        return [[] for _ in prompts]
    rows = torch.stack(new_tokens, dim=1).tolist()
    return [[t for t in row if t >= 0] for row in rows]


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row of (batch, vocab) logits."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        # Nucleus sampling: keep the most likely tokens whose probabilities sum to top_p
        # (always at least the most likely one), drop the tail.
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
