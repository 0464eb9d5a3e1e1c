"""Reading the shards for training: memory-mapped, deterministic, mixable, resumable.

Sequences. The tokens of each shard are one stream (the values buffer of its
`tokens` list column, memory-mapped with zero copies), cut into training
sequences of `seq_len + 1` tokens (inputs, and targets shifted by one) that
overlap by one token. The sequence length is chosen here, at training time.
Only the tail of each shard shorter than a sequence is left out, and
counted (`dropped_tokens`). The list offsets say where each document starts.

Order. The stream of training samples is a function of the position in it
alone, never of the number of ranks or workers:
- without a mixture, sample i is sequence `permutation(epoch)[i mod N]`
  with one seeded permutation of all N sequences per epoch;
- with a mixture (`{"web": 0.7, "code": 0.3}`), each block of 1024 samples
  holds a fixed number from each source (the weights, rounded) in a seeded
  shuffled order, and each source walks through its own per-epoch
  permutations. A small source repeats (more epochs) rather than starves.

Each optimizer step consumes the next `global_batch` samples; data-parallel
rank r takes the r-th contiguous slice and cuts it into micro-batches. So the
sequences of a step, and hence the loss, do not depend on how the batch is
split across ranks and accumulation steps, and the loader's state is the
number of samples consumed: a run resumed on a different number of ranks
continues the same global order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.shards import read_manifest, tokens_column

MIX_BLOCK = 1024


class TokenSequences:
    """The training sequences of one split (optionally of some sources only), by index."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        seq_len: int,
        manifest: dict | None = None,
        sources: set[str] | None = None,
    ):
        data_dir = Path(data_dir)
        manifest = manifest or read_manifest(data_dir)
        self.seq_len = seq_len
        self.fingerprint = manifest["fingerprint"]
        # Keep the memory maps open: the arrays are zero-copy views of them.
        self._tokens: list[np.ndarray] = []
        self._doc_offsets: list[np.ndarray] = []
        for shard in manifest["shards"]:
            if shard["split"] != split or (sources is not None and shard["source"] not in sources):
                continue
            column = tokens_column(data_dir / shard["file"])
            self._tokens.append(column.values.to_numpy(zero_copy_only=True))
            self._doc_offsets.append(column.offsets.to_numpy(zero_copy_only=True))
        counts = np.array([max(0, (len(t) - 1) // seq_len) for t in self._tokens], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(counts)))
        self.dropped_tokens = int(sum(len(t) for t in self._tokens) - (counts * seq_len + (counts > 0)).sum())
        if self._starts[-1] == 0:
            which = f" of {', '.join(sorted(sources))}" if sources else ""
            raise DataError(
                f"{data_dir}: the {split} split{which} has no sequence of {seq_len + 1} tokens; "
                f"lower train.seq_len or add data"
            )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, (index - int(self._starts[shard])) * self.seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        shard, offset = self._locate(index)
        return self._tokens[shard][offset : offset + self.seq_len + 1]

    def document_starts(self, index: int) -> np.ndarray:
        """Positions in the sequence's inputs where a document starts (for resetting positions or attention)."""
        shard, offset = self._locate(index)
        offsets = self._doc_offsets[shard]
        lo, hi = np.searchsorted(offsets, [offset, offset + self.seq_len])
        return offsets[lo:hi].astype(np.int64) - offset


class SampleOrder:
    """Which sequence of which group is sample i of the stream (see the module docstring)."""

    def __init__(self, group_sizes: list[int], weights: list[float], seed: int):
        self.group_sizes, self.seed = group_sizes, seed
        # Largest-remainder rounding: the per-block counts sum to MIX_BLOCK and follow the weights.
        shares = np.array(weights, dtype=np.float64) / sum(weights) * MIX_BLOCK
        counts = np.floor(shares).astype(np.int64)
        counts[np.argsort(-(shares - counts), kind="stable")[: MIX_BLOCK - counts.sum()]] += 1
        self.block_counts = counts
        self._block: tuple[int, np.ndarray, np.ndarray] | None = None
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}

    def _block_layout(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if self._block is None or self._block[0] != block:
            labels = np.repeat(np.arange(len(self.block_counts)), self.block_counts)
            if len(self.block_counts) > 1:
                np.random.default_rng([self.seed, 1, block]).shuffle(labels)
            within = np.empty(MIX_BLOCK, dtype=np.int64)
            for group, count in enumerate(self.block_counts):
                within[labels == group] = np.arange(count) + block * count
            self._block = (block, labels, within)
        return self._block[1], self._block[2]

    def _permutation(self, group: int, epoch: int) -> np.ndarray:
        cached = self._permutations.get(group)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, 0, group, epoch])
            cached = (epoch, rng.permutation(self.group_sizes[group]))
            self._permutations[group] = cached
        return cached[1]

    def __call__(self, position: int) -> tuple[int, int]:
        labels, within = self._block_layout(position // MIX_BLOCK)
        group, j = int(labels[position % MIX_BLOCK]), int(within[position % MIX_BLOCK])
        size = self.group_sizes[group]
        return group, int(self._permutation(group, j // size)[j % size])


class BatchLoader:
    """The micro-batches of one data-parallel rank, step after step, in a fixed global order."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        seq_len: int,
        micro_batch_size: int,
        grad_accum_steps: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        mixture: dict[str, float] | None = None,
        manifest: dict | None = None,
        document_ids: bool = False,
    ):
        manifest = manifest or read_manifest(data_dir)
        self.document_ids = document_ids
        self.mixture = dict(mixture or {})
        self.groups = _sequence_groups(data_dir, split, seq_len, manifest, self.mixture)
        weights = list(self.mixture.values()) or [1.0]
        self.order = SampleOrder([len(g) for g in self.groups], weights, seed)
        self.micro_batch_size, self.grad_accum_steps = micro_batch_size, grad_accum_steps
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.fingerprint = manifest["fingerprint"]
        self.global_batch = micro_batch_size * grad_accum_steps * dp_size
        self.consumed = 0

    @property
    def dropped_tokens(self) -> int:
        return sum(g.dropped_tokens for g in self.groups)

    def sample(self, position: int) -> np.ndarray:
        group, index = self.order(position)
        return self.groups[group][index]

    def sample_document_ids(self, position: int) -> np.ndarray:
        """Which document each input token of sample `position` belongs to, counted from 0 in the sequence."""
        group, index = self.order(position)
        starts = np.zeros(self.groups[group].seq_len, dtype=np.int64)
        starts[self.groups[group].document_starts(index)] = 1
        starts[0] = 0  # the first token's document is document 0, whether it starts there or not
        return np.cumsum(starts)

    def next_step(self) -> list[tuple[np.ndarray, ...]]:
        """The micro-batches of this rank for the next optimizer step.

        Each is (inputs, targets), or (inputs, targets, document ids) when the
        loader was made with `document_ids=True`.
        """
        per_rank = self.micro_batch_size * self.grad_accum_steps
        start = self.consumed + self.dp_rank * per_rank
        positions = range(start, start + per_rank)
        rows = np.stack([self.sample(p) for p in positions]).astype(np.int64)
        arrays = [rows[:, :-1], rows[:, 1:]]
        if self.document_ids:
            arrays.append(np.stack([self.sample_document_ids(p) for p in positions]))
        self.consumed += self.global_batch
        return [
            tuple(array[i : i + self.micro_batch_size] for array in arrays)
            for i in range(0, per_rank, self.micro_batch_size)
        ]

    def state_dict(self) -> dict:
        return {
            "consumed": self.consumed,
            "epoch": self.consumed // sum(len(g) for g in self.groups),
            "seed": self.seed,
            "mixture": self.mixture,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "mixture", "fingerprint"):
            if state[key] != self.state_dict()[key]:
                raise DataError(
                    f"the checkpoint's loader was saved with {key}={state[key]!r}, this run has "
                    f"{self.state_dict()[key]!r}; resume with the same data, seed and mixture"
                )
        self.consumed = state["consumed"]


def check_mixture(mixture: dict[str, float], manifest: dict, data_dir) -> None:
    available = {shard["source"] for shard in manifest["shards"]}
    for name, weight in mixture.items():
        if name not in available:
            raise DataError(
                f"train.mixture: no source {name!r} in {data_dir} (it has {', '.join(sorted(available))}); "
                f"name the dataset's sources"
            )
        if weight <= 0:
            raise DataError(f"train.mixture.{name} = {weight}: a weight must be positive; remove the source instead")


def _sequence_groups(data_dir, split: str, seq_len: int, manifest: dict, mixture: dict) -> list[TokenSequences]:
    """One group of all sequences, or one per source of the mixture."""
    if not mixture:
        return [TokenSequences(data_dir, split, seq_len, manifest)]
    check_mixture(mixture, manifest, data_dir)
    return [TokenSequences(data_dir, split, seq_len, manifest, sources={name}) for name in mixture]
