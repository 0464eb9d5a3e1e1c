"""The loss in chunks of tokens (model/loss.py): the same loss and gradients as the whole logits, less memory."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model import GPT, GPTConfig
from model.loss import IGNORE_INDEX, linear_cross_entropy

TOKENS, WIDTH, VOCAB = 37, 16, 101
GPT2_STYLE = {"vocab_size": 300, "max_seq_len": 64, "n_layer": 2, "n_head": 4, "n_embd": 32}
LLAMA_STYLE = GPT2_STYLE | {
    "pos_encoding": "rope",
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "bias": False,
    "tie_embeddings": False,
    "n_kv_heads": 2,
}


def head_inputs(dtype=torch.float64, ignored=(3, 5, 20), tokens=TOKENS, width=WIDTH, vocab=VOCAB):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, width, dtype=dtype, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, width, dtype=dtype, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[list(ignored)] = IGNORE_INDEX
    return hidden, weight, targets


def loss_and_gradients(loss_of, hidden, weight, scale=3.0):
    hidden.grad = weight.grad = None
    loss = loss_of()
    (scale * loss).backward()  # the loss's own gradient (a loss scale, a mean over micro-batches) scales both
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk_tokens", [1, 8, 36, 37, 1000])
def test_chunks_give_the_loss_and_gradients_of_the_whole_logits(chunk_tokens):
    """In fp64, to rounding: every chunking (one token, uneven, one chunk, more than all) and ignored targets."""
    hidden, weight, targets = head_inputs()
    ours = loss_and_gradients(lambda: linear_cross_entropy(hidden, weight, targets, chunk_tokens), hidden, weight)
    whole = loss_and_gradients(lambda: F.cross_entropy(hidden @ weight.T, targets), hidden, weight)
    for mine, reference in zip(ours, whole, strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-12, rtol=1e-12)
    assert whole[1][3].abs().max() == ours[1][3].abs().max() == 0  # an ignored target's hidden state: no gradient


def test_gradcheck_against_finite_differences():
    """Small (gradcheck perturbs every input in turn): uneven chunks of 4 of 11 tokens, two targets ignored."""
    hidden, weight, targets = head_inputs(ignored=(3, 5), tokens=11, width=4, vocab=13)
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, targets, 4), (hidden, weight))


def test_without_gradients_the_loss_alone():
    hidden, weight, targets = head_inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, 8)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, targets).detach(), atol=1e-12, rtol=0)


def test_all_targets_ignored_gives_nan_as_the_whole_logits_do():
    hidden, weight, targets = head_inputs(ignored=range(TOKENS))
    assert torch.isnan(linear_cross_entropy(hidden, weight, targets, 8))
    assert torch.isnan(F.cross_entropy(hidden @ weight.T, targets))


def test_a_chunk_must_hold_a_token():
    hidden, weight, targets = head_inputs()
    with pytest.raises(ValueError, match="chunk_tokens must be at least 1, got 0"):
        linear_cross_entropy(hidden, weight, targets, 0)


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2-tied", "llama-untied"])
def test_gpt_gives_the_same_loss_and_gradients_without_logits(style):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**style))
    ids = torch.randint(0, style["vocab_size"], (3, 41))

    def run(chunk_tokens):
        model.zero_grad(set_to_none=True)
        model.loss_chunk_tokens = chunk_tokens
        logits, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        return logits, loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    whole_logits, whole_loss, whole_grads = run(0)
    logits, loss, grads = run(7)
    assert whole_logits.shape == (3, 40, style["vocab_size"]) and logits is None
    torch.testing.assert_close(loss, whole_loss, atol=1e-6, rtol=0)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_weights_and_autocast_keep_the_gradient_dtypes_and_agree_with_the_whole_logits():
    """bf16 weights: bf16 gradients; fp32 weights under autocast: fp32 gradients. Both within bf16's accuracy."""
    for dtype, autocast in ((torch.bfloat16, False), (torch.float32, True)):
        hidden, weight, targets = head_inputs(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ours = loss_and_gradients(lambda: linear_cross_entropy(hidden, weight, targets, 8), hidden, weight)
            whole = loss_and_gradients(lambda: F.cross_entropy((hidden @ weight.T).float(), targets), hidden, weight)
        assert ours[0].dtype == torch.float32
        assert ours[1].dtype == ours[2].dtype == dtype
        for mine, reference in zip(ours, whole, strict=True):
            torch.testing.assert_close(mine.float(), reference.float(), atol=2e-2, rtol=2e-2)


class LargestLogits(TorchDispatchMode):
    """Records the most elements of any tensor of logits an operation makes (forward and backward alike):
    new memory (not a view) whose last dimension is the vocabulary."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size, self.numel = vocab_size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        existing = {tensor.untyped_storage().data_ptr() for tensor in inputs}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            logits = isinstance(tensor, torch.Tensor) and tensor.ndim and tensor.shape[-1] == self.vocab_size
            if logits and tensor.untyped_storage().data_ptr() not in existing:  # a view (weight.T) is not memory
                self.numel = max(self.numel, tensor.numel())
        return out


def test_no_tensor_as_large_as_the_logits_exists_in_the_training_step():
    """The memory claim, counted exactly: with chunks of 16 tokens, no tensor holds the logits of more tokens."""
    torch.manual_seed(0)
    config = GPTConfig(**GPT2_STYLE)
    model = GPT(config)
    ids = torch.randint(0, config.vocab_size, (4, 33))
    sizes = {}
    for chunk_tokens in (0, 16):
        model.loss_chunk_tokens = chunk_tokens
        with LargestLogits(config.vocab_size) as largest:
            model(ids[:, :-1], ids[:, 1:])[1].backward()
        sizes[chunk_tokens] = largest.numel
    assert sizes[0] == 4 * 32 * config.vocab_size  # the whole logits
    assert sizes[16] == 16 * config.vocab_size  # one chunk's
