"""Text in, text out: sample continuations of prompts from a model and its tokenizer."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from data_pipeline.tokenizer import end_of_text_id
from model import GPT, generate
from pretrain.errors import PretrainError
from pretrain.train.sequence_parallel import whole_sequences


def generate_texts(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
) -> list[str]:
    """Each prompt followed by up to `max_new_tokens` sampled tokens, stopping at end-of-text.

    The prompts are generated as one batch; an empty prompt starts from end-of-text.
    """
    device = next(model.parameters()).device
    eot = end_of_text_id(tokenizer)
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids or [eot] for p in prompts]
    context = model.config.max_seq_len
    for prompt, ids in zip(prompts, encoded):
        if len(ids) >= context:
            raise PretrainError(
                f"the prompt {prompt[:40]!r}... is {len(ids)} tokens, and the model's context (max_seq_len) is "
                f"{context}: shorten the prompt to leave room for new tokens"
            )
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    with whole_sequences(model):  # the cache grows a token at a time: no slices to split
        continuations = generate(
            model, encoded, max_new_tokens, temperature, top_k, top_p, stop_tokens=[eot], generator=generator
        )
    model.train(was_training)
    return [tokenizer.decode(ids + new, skip_special_tokens=True) for ids, new in zip(encoded, continuations)]


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 64, **sampling) -> str:
    return generate_texts(model, tokenizer, [prompt], max_new_tokens, **sampling)[0]
