"""The validation loss: the mean next-token loss over held-out sequences, saying how many it covers.

Which sequences. The validation split is cut into sequences as training cuts
its own (data_pipeline/loader.py), and one pass takes the first `count` of a
seeded permutation of them: `batches` micro-batches per data-parallel rank
(eval.batches), or every one (eval.batches = all, and `pretrain eval`).
Rank r takes the r-th contiguous slice, as the training loader does. Where the
split holds fewer sequences than the ranks' micro-batches do, the rows past
its end are padding whose targets count for nothing: no sequence is scored
twice, and every rank runs the same number of forward passes (a collective
call under ZeRO-3 and tensor parallelism).

A mixture (train.mixture) is scored per source, each source's sequences in
micro-batches of their own, so each has its loss besides the total. The total
is the mean over every scored token, whatever source it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data_pipeline.loader import BatchLoader
from model.loss import IGNORE_INDEX

ALL = "all"


@dataclass
class ValidationLoss:
    loss: float
    sequences: int
    tokens: int
    sources: dict[str, float] = field(default_factory=dict)  # each mixture source's own loss

    def metrics(self) -> dict[str, float]:
        """The loop's metric keys (pretrain/tracking/metric_names.py); each source's under eval/<source>/loss."""
        return {
            "val_loss": self.loss,
            "val_perplexity": perplexity(self.loss),
            "val_sequences": self.sequences,
            "val_tokens": self.tokens,
            **{f"eval/{source}/loss": loss for source, loss in self.sources.items()},
        }


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy): the number of tokens the model is as unsure as choosing among."""
    return math.exp(min(loss, 700.0))  # exp overflows a float beyond about 709


@dataclass
class _Part:
    source: str | None
    loader: BatchLoader  # only its sample order is used: which sequence is position i
    count: int  # sequences scored
    batches: int  # micro-batches per rank


class HeldOut:
    """The held-out sequences of one validation pass, and this rank's micro-batches of them."""

    def __init__(
        self,
        data_dir: str | Path,
        manifest: dict,
        seq_len: int,
        micro_batch_size: int,
        batches: int | str,
        dp: tuple[int, int] = (0, 1),
        seed: int = 0,
        sources: list[str] | None = None,
        document_ids: bool = False,
    ):
        self.seq_len, self.micro_batch_size, self.document_ids = seq_len, micro_batch_size, document_ids
        self.dp_rank, self.dp_size = dp
        per_step = micro_batch_size * self.dp_size
        self.parts = []
        for source in sources or [None]:
            loader = BatchLoader(
                data_dir,
                "val",
                seq_len,
                micro_batch_size,
                1,
                self.dp_rank,
                self.dp_size,
                seed,
                mixture={source: 1.0} if source else None,
                manifest=manifest,
                document_ids=document_ids,
            )
            size = len(loader.groups[0])
            count = size if batches == ALL else min(size, batches * per_step)
            per_rank = math.ceil(count / per_step) if batches == ALL else batches
            self.parts.append(_Part(source, loader, count, per_rank))

    @property
    def sequences(self) -> int:
        return sum(part.count for part in self.parts)

    def micro_batches(self, part: _Part):
        """This rank's (inputs, targets[, document ids]) of one part; padding rows' targets are IGNORE_INDEX."""
        per_rank = part.batches * self.micro_batch_size
        start = self.dp_rank * per_rank
        for first in range(start, start + per_rank, self.micro_batch_size):
            positions = range(first, first + self.micro_batch_size)
            # A padding row holds a real sequence (the first), so the forward pass sees ordinary inputs.
            rows = np.stack([part.loader.sample(p if p < part.count else 0) for p in positions]).astype(np.int64)
            targets = rows[:, 1:].copy()
            targets[[p >= part.count for p in positions]] = IGNORE_INDEX
            arrays = [rows[:, :-1], targets]
            if self.document_ids:
                arrays.append(
                    np.stack([part.loader.sample_document_ids(p if p < part.count else 0) for p in positions])
                )
            yield tuple(arrays)


@torch.no_grad()
def validation_loss(model, held_out: HeldOut, device: torch.device) -> ValidationLoss:
    """The loss of `model` (GPT's call: (logits, mean loss)) on the held-out sequences; in a job, every rank's
    part of them, a collective call. The caller puts the model in eval mode.

    The sums stay on the device until every batch is done: one read of the device per validation."""
    sums = torch.zeros(len(held_out.parts), dtype=torch.float64, device=device)  # per part: loss x counted targets
    counts = torch.zeros(len(held_out.parts), dtype=torch.float64)  # targets that count, known on the host
    for index, part in enumerate(held_out.parts):
        for batch in held_out.micro_batches(part):
            # A batch of padding alone still runs: it is this rank's share of a collective forward pass.
            loss = model(*(torch.from_numpy(array).to(device) for array in batch))[1]
            counted = int((batch[1] != IGNORE_INDEX).sum())
            if counted:
                sums[index] += loss.detach().double() * counted
                counts[index] += counted
    totals = torch.stack([sums.cpu(), counts])
    if dist.is_initialized():
        dist.all_reduce(totals)  # ranks of one tensor-parallel group count the same batches: ratios unchanged
    (summed, counted) = totals.tolist()
    sources = {
        part.source: loss_sum / count
        for part, loss_sum, count in zip(held_out.parts, summed, counted, strict=True)
        if part.source is not None
    }
    return ValidationLoss(
        sum(summed) / sum(counted), held_out.sequences, held_out.sequences * held_out.seq_len, sources
    )
