"""Ulysses sequence parallelism: each sequence split across ranks, all-to-all around the attention core.

A long sequence's activations outgrow one device long before its weights do.
Under `parallel.sequence_parallel_size = P`, P consecutive ranks read the
same sequences (token ids are 4 bytes a token: reading them whole costs
nothing) and each computes one P-th slice of every sequence: its embeddings,
norms, projections, feed-forward network and loss, so each holds 1/P of the
activations. Attention is the one place a token meets the others. There
(DeepSpeed Ulysses, arXiv:2309.14509), one all-to-all turns each rank's
queries, keys and values for its slice and all heads into whole sequences
for 1/P of the heads; each rank attends over whole sequences for its heads,
with the whole sequence's causal or document mask; a second all-to-all turns
the result back into its slice with every head. Two all-to-alls per layer
forward (four with backward), each moving 1/P of the slice's activations:
the communication per rank falls as P grows.

The model is unchanged but for two switches (model/gpt.py's
`sequence_shard`, the attention's `core`): positions and masks come from the
whole sequence, so RoPE and document masking need nothing else. To DeepSpeed
every rank is data-parallel: each slice's mean loss is one rank's share, and
DeepSpeed's mean of the gradients over all ranks is the gradient of the
mean over every token (equal slices). ZeRO shards over all ranks as before.

The project's own all-to-all rather than DeepSpeed's `DistributedAttention`:
DeepSpeed's keeps the sequence-parallel group and the key/value head count in
process-wide state (`deepspeed.utils.groups`) and takes its inputs in another
layout, and ours is two reshapes around one collective of torch's, which
autograd and torch.compile both know.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_to_all_single_autograd

from model import GPT
from model.attention import attend


def sequence_groups(size: int) -> dist.ProcessGroup | None:
    """This rank's sequence-parallel group: `size` consecutive ranks (a collective call; every rank makes every
    group, as torch requires). None when sequences are not split."""
    if size == 1:
        return None
    mine = None
    for first in range(0, dist.get_world_size(), size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= dist.get_rank() < first + size:
            mine = group
    return mine


def split_sequences(model: GPT, group: dist.ProcessGroup) -> None:
    """Make `model` compute this rank's slice of each sequence, attending over the whole with `group`."""
    model.sequence_shard = (dist.get_rank(group), dist.get_world_size(group))
    for block in model.layers:
        block.self_attn.core = UlyssesAttention(group)


@contextlib.contextmanager
def whole_sequences(model: GPT):
    """Every rank computes whole sequences for a while: generation (its cache grows a token at a time) and task
    scoring (sequences of every length). Every rank of a group then computes the same thing; nothing to do
    where sequences are not split."""
    if model.sequence_shard is None:
        yield
        return
    shard, cores = model.sequence_shard, [block.self_attn.core for block in model.layers]
    model.sequence_shard = None
    for block in model.layers:
        block.self_attn.core = attend
    try:
        yield
    finally:
        model.sequence_shard = shard
        for block, core in zip(model.layers, cores, strict=True):
            block.self_attn.core = core


class UlyssesAttention:
    """The attention core of one rank of a sequence-parallel group: (batch, heads, slice, head_dim) in and out."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.size = dist.get_world_size(group)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
    ) -> torch.Tensor:
        q, k, v = (self.heads_to_sequence(t) for t in (q, k, v))
        return self.sequence_to_heads(attend(q, k, v, mask, dropout_p))

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, slice, d) of this rank's slice -> (batch, heads / P, P x slice, d): the whole sequence
        for the rank's share of the heads (the r-th P-th of them on rank r)."""
        batch, heads, length, dim = x.shape
        # Rank j is sent the j-th group of heads: the all-to-all exchanges the first dimension's blocks.
        send = x.reshape(batch, self.size, heads // self.size, length, dim).transpose(0, 1).contiguous()
        received = self.all_to_all(send)  # block j: rank j's slice of this rank's heads
        return received.permute(1, 2, 0, 3, 4).reshape(batch, heads // self.size, self.size * length, dim)

    def sequence_to_heads(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse: (batch, heads / P, P x slice, d) -> (batch, heads, slice, d)."""
        batch, heads, length, dim = y.shape
        send = y.reshape(batch, heads, self.size, length // self.size, dim).permute(2, 0, 1, 3, 4).contiguous()
        received = self.all_to_all(send)  # block j: this rank's slice of rank j's heads
        return received.transpose(0, 1).reshape(batch, heads * self.size, length // self.size, dim)

    def all_to_all(self, blocks: torch.Tensor) -> torch.Tensor:
        """Block j of the first dimension to rank j; block j of the result from rank j. Differentiable: the
        gradient goes back by the same exchange."""
        return all_to_all_single_autograd(blocks, None, None, self.group)
