"""generate(): the key/value cache, batched prompts of different lengths, sampling filters and stop tokens."""

import pytest
import torch

from model import GPT, GPTConfig, generate
from model.generation import sample

TINY = {"vocab_size": 97, "max_seq_len": 48, "n_layer": 2, "n_head": 4, "n_embd": 32}
VARIANTS = {
    "gpt2": {"pos_encoding": "learned"},
    "sinusoidal": {"pos_encoding": "sinusoidal"},
    "llama-gqa": {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "n_kv_heads": 2},
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42]]


def tiny_model(variant: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**TINY, **VARIANTS[variant])).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_equals_uncached_token_for_token(variant):
    model = tiny_model(variant)
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "top_k": 20, "top_p": 0.9}):
        runs = [
            generate(model, PROMPTS, 20, generator=torch.Generator().manual_seed(3), use_cache=use_cache, **sampling)
            for use_cache in (True, False)
        ]
        assert runs[0] == runs[1]
        assert [len(row) for row in runs[0]] == [20, 20, 20]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_padded_batch_generates_what_each_prompt_generates_alone(variant):
    model = tiny_model(variant)
    batched = generate(model, PROMPTS, 12, temperature=0)
    alone = [generate(model, [prompt], 12, temperature=0)[0] for prompt in PROMPTS]
    assert batched == alone


def test_generation_stops_before_a_stop_token_row_by_row():
    model = tiny_model("gpt2")
    free = generate(model, PROMPTS, 10, temperature=0)
    stop = free[0][-1]
    stopped = generate(model, PROMPTS, 10, temperature=0, stop_tokens=[stop])
    assert stopped == [full[: full.index(stop)] if stop in full else full for full in free]
    assert len(stopped[0]) < len(free[0])


def test_generation_stays_within_the_context_window():
    model = tiny_model("gpt2")
    assert len(generate(model, [[1] * 40], 100, temperature=0)[0]) == 48 - 40


def test_an_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_model("gpt2"), [[1, 2], []], 4)


def test_top_k_keeps_only_the_k_most_likely_tokens():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(2000, 1)
    drawn = sample(logits, 1.0, top_k=2, top_p=None, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Probabilities 0.5, 0.3, 0.15, 0.05: p = 0.7 needs the first two, p = 0.85 the first three.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(4000, 1)
    for top_p, kept in ((0.7, {0, 1}), (0.85, {0, 1, 2}), (0.01, {0})):
        drawn = sample(logits, 1.0, top_k=None, top_p=top_p, generator=torch.Generator().manual_seed(0))
        assert set(drawn.tolist()) == kept


def test_greedy_is_the_argmax_and_sampling_follows_the_seed():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample(logits, 0, None, None, None), logits.argmax(-1))
    draws = [sample(logits, 1.0, None, None, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*draws)
