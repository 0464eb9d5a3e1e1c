"""The model on a CUDA GPU: bf16 forward/backward through the fused attention kernels, and generation.

Skipped (with the reason shown) on machines without a GPU, such as CI.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from data_pipeline.tokenizer import train_tokenizer
from model import GPT, GPTConfig, generate
from pretrain.train.sampling import generate_text

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIGS = {
    "gpt2-style": GPTConfig(vocab_size=512, max_seq_len=256, n_layer=2, n_head=4, n_embd=256),
    "llama-style": GPTConfig(
        vocab_size=512,
        max_seq_len=256,
        n_layer=2,
        n_head=4,
        n_embd=256,
        pos_encoding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        tie_embeddings=False,
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_bf16_training_step_on_the_flash_kernel(name):
    torch.manual_seed(0)
    model = GPT(CONFIGS[name]).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ids = torch.randint(0, 512, (4, 257), device="cuda")
    losses = []
    # Only the flash kernel allowed: the step fails if SDPA cannot use it.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            _, loss = model(ids[:, :-1], ids[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_cuda_and_cpu_agree_in_fp32():
    torch.manual_seed(0)
    model = GPT(CONFIGS["llama-style"]).eval()
    ids = torch.randint(0, 512, (2, 64))
    cpu_logits, _ = model(ids)
    cuda_logits, _ = model.cuda()(ids.cuda())
    torch.testing.assert_close(cuda_logits.cpu(), cpu_logits, atol=2e-3, rtol=1e-3)


def test_generation_on_the_gpu():
    tokenizer = train_tokenizer(["the cat sat on the mat"] * 50, vocab_size=300)
    model = GPT(CONFIGS["gpt2-style"]).cuda()
    text = generate_text(model, tokenizer, "the cat", max_new_tokens=8, seed=0)
    assert text.startswith("the cat")
    assert text == generate_text(model, tokenizer, "the cat", max_new_tokens=8, seed=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_document_masking_in_bf16_on_the_memory_efficient_kernel(name):
    """A boolean mask rules out flash; the memory-efficient kernel takes it, forward and backward."""
    torch.manual_seed(0)
    model = GPT(CONFIGS[name]).cuda()
    ids = torch.randint(0, 512, (4, 257), device="cuda")
    document_ids = (torch.rand(4, 256, device="cuda") < 0.02).long().cumsum(dim=1)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(ids[:, :-1], ids[:, 1:], document_ids)
        loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_generation_equals_uncached_on_the_gpu(name):
    torch.manual_seed(0)
    model = GPT(CONFIGS[name]).cuda().eval()
    prompts = [[5, 6, 7, 8, 9], [3], [40, 41]]
    cached = generate(model, prompts, 24, temperature=0)
    assert cached == generate(model, prompts, 24, temperature=0, use_cache=False)
    assert [len(row) for row in cached] == [24, 24, 24]


def test_explicit_attention_weights_on_the_gpu():
    torch.manual_seed(0)
    model = GPT(CONFIGS["llama-style"]).cuda().eval()
    weights = model.attention_weights(torch.randint(0, 512, (1, 32), device="cuda"))
    assert weights[0].shape == (1, 4, 32, 32)
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(1, 4, 32, device="cuda"))


def test_our_adamw_clips_and_skips_without_making_the_host_wait():
    """pretrain.train.optim.AdamW on the GPU: the step (norm, clipping, non-finite check, fused update) queues
    without a single host-device synchronization, which torch's sync debug mode turns into an error; only
    reading `overflow` afterwards waits, and a NaN gradient left the weights as they were."""
    from pretrain.train.optim import AdamW

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(64, 64, device="cuda")) for _ in range(3)]
    optimizer = AdamW(weights, lr=1e-2, max_norm=1.0)
    for gradient in (1.0, float("nan")):
        before = [weight.detach().clone() for weight in weights]
        for weight in weights:
            weight.grad = torch.full_like(weight, gradient)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        changed = any(not torch.equal(weight, old) for weight, old in zip(weights, before, strict=True))
        assert optimizer.overflow != changed
    assert optimizer.overflow  # the NaN step, last
