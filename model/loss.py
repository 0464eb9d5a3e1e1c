"""The head's cross-entropy in chunks of tokens, so the logits of the whole batch never exist at once.

The head turns each token's hidden state (n_embd numbers) into vocab_size
logits. Computed at once for a batch, that is a (tokens, vocab) tensor kept
for backward, its fp32 copy for the softmax, and the gradient of each: for
GPT-2's 50,304-token vocabulary and 16 x 1024 tokens, 3.3 GB per fp32 copy,
more than all the other activations of the 124M model together.

`linear_cross_entropy` takes the hidden states and the head's weight instead
of the logits. Chunk by chunk of tokens it computes the logits, the loss,
and at once the gradients of the hidden states and of the weight (for the
mean cross-entropy the gradient of the logits is softmax - one-hot, over the
number of tokens), then lets the chunk's logits go. Backward only scales the
two stored gradients by the loss's own. The arithmetic is the unchunked one
(the same three matrix products); only the peak memory changes, to one
chunk's logits. Liger Kernel's FusedLinearCrossEntropy works the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # targets with this value count for nothing, as in F.cross_entropy


class LMHead(nn.Linear):
    """The linear head over the vocabulary; given targets, it returns their mean cross-entropy instead of logits.

    The loss is computed inside this module's call, not from its weight
    outside it: what wraps a module's call holds for the loss too (ZeRO-3
    gathers a partitioned weight around it and releases it after). The
    caller says how many tokens a chunk holds (GPT passes its
    `loss_chunk_tokens`, which the trainer sets from the config).
    """

    def __init__(self, n_embd: int, vocab_size: int):
        super().__init__(n_embd, vocab_size, bias=False)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, chunk_tokens: int = 0) -> torch.Tensor:
        if targets is None:
            return super().forward(hidden)
        return linear_cross_entropy(hidden, self.weight, targets, chunk_tokens)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """mean(cross_entropy(hidden @ weight.T, targets)) over the targets that are not IGNORE_INDEX.

    hidden: (..., n_embd); weight: (vocab, n_embd); targets: hidden's leading shape.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens)
    # Evaluation: the loss alone, still one chunk of logits at a time.
    counted = (targets != IGNORE_INDEX).sum()
    total = sum(
        F.cross_entropy(
            (hidden[start : start + chunk_tokens] @ weight.T).to(torch.promote_types(weight.dtype, torch.float32)),
            targets[start : start + chunk_tokens],
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        for start in range(0, len(targets), chunk_tokens)
    )
    return total / counted


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):
        counted = (targets != IGNORE_INDEX).sum()
        # Sums in fp32 at least, whatever the weight's dtype; the weight's gradient is cast once, at the end.
        wide = torch.promote_types(weight.dtype, torch.float32)
        loss = torch.zeros((), dtype=wide, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device)
        for start in range(0, len(targets), chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            loss += _chunk_loss_and_gradients(
                hidden[chunk], weight, targets[chunk], counted, grad_hidden[chunk], grad_weight
            )
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss / counted

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None


def _chunk_loss_and_gradients(hidden, weight, targets, counted, grad_hidden_out, grad_weight_sum) -> torch.Tensor:
    """One chunk's summed loss; writes its hidden-state gradient and adds its weight gradient (of the mean)."""
    # The product runs in the ambient precision (bf16 weights, or autocast); the softmax in fp32.
    logits = hidden @ weight.T
    product_dtype = logits.dtype
    logits = logits.to(grad_weight_sum.dtype)
    counts = targets != IGNORE_INDEX
    safe_targets = torch.where(counts, targets, 0)
    log_normalizer = torch.logsumexp(logits, dim=-1)
    target_logits = logits.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    loss = ((log_normalizer - target_logits) * counts).sum()
    # d(mean loss)/d(logits) = (softmax - one_hot(target)) / counted, zero for ignored targets; made in place.
    grad_logits = logits.sub_(log_normalizer.unsqueeze(1)).exp_()
    grad_logits.scatter_add_(1, safe_targets.unsqueeze(1), torch.full_like(target_logits, -1.0).unsqueeze(1))
    grad_logits.mul_((counts.to(grad_logits.dtype) / counted).unsqueeze(1))
    grad_logits = grad_logits.to(product_dtype)
    grad_hidden_out.copy_(grad_logits @ weight)
    grad_weight_sum.add_(grad_logits.T @ hidden)
    return loss
