"""Text in, text out: sample a continuation of a prompt from a model and its tokenizer."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from data_pipeline.tokenizer import end_of_text_id
from model import GPT


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """The prompt followed by up to `max_new_tokens` sampled tokens, stopping at end-of-text."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [end_of_text_id(tokenizer)]
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    output = model.generate(
        torch.tensor([ids], device=device),
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        stop_token=end_of_text_id(tokenizer),
        generator=generator,
    )
    model.train(was_training)
    return tokenizer.decode(output[0].tolist(), skip_special_tokens=True)
