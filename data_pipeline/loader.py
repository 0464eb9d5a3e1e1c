"""Reading the shards for training: memory-mapped, deterministic, resumable.

The tokens of a split are treated as one stream per shard, cut into
training sequences of `seq_len + 1` tokens (inputs and the targets shifted
by one) that overlap by one token. The sequence length is chosen here, at
training time, without re-tokenizing.

Order: one seeded permutation of all sequences per epoch, independent of the
number of ranks. Each optimizer step consumes the next `global_batch`
sequences of it; data-parallel rank r takes the r-th contiguous slice of
those and cuts it into micro-batches. So the set of sequences in a step, and
hence the loss, does not depend on how the batch is split across ranks and
gradient-accumulation steps, and the position is one number to resume from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from data_pipeline.errors import DataError
from data_pipeline.shards import read_manifest


class TokenSequences:
    """All training sequences of one split, addressed by a global index."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int, manifest: dict | None = None):
        data_dir = Path(data_dir)
        manifest = manifest or read_manifest(data_dir)
        self.seq_len = seq_len
        self.fingerprint = manifest["fingerprint"]
        # Keep the memory maps open: the token arrays are zero-copy views of them.
        self._tokens: list[np.ndarray] = []
        for shard in manifest["shards"]:
            if shard["split"] != split:
                continue
            mapped = pa.memory_map(str(data_dir / shard["file"]))
            column = pa.ipc.open_file(mapped).get_batch(0).column("tokens")
            self._tokens.append(column.values.to_numpy(zero_copy_only=True))
        counts = np.array([max(0, (len(t) - 1) // seq_len) for t in self._tokens], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(counts)))
        if self._starts[-1] == 0:
            raise DataError(
                f"{data_dir}: the {split} split has no sequence of {seq_len + 1} tokens; "
                f"lower train.seq_len or add data"
            )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        offset = (index - int(self._starts[shard])) * self.seq_len
        return self._tokens[shard][offset : offset + self.seq_len + 1]


class BatchLoader:
    """The micro-batches of one data-parallel rank, step after step, in a fixed global order."""

    def __init__(
        self,
        sequences: TokenSequences,
        micro_batch_size: int,
        grad_accum_steps: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
    ):
        self.sequences = sequences
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed = seed
        self.global_batch = micro_batch_size * grad_accum_steps * dp_size
        self.steps_per_epoch = len(sequences) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the split has {len(sequences)} sequences, fewer than one global batch "
                f"({self.global_batch}); lower train.global_batch_size or train.seq_len, or add data"
            )
        self.epoch, self.step_in_epoch = 0, 0
        self._permutation = self._permute(0)

    def _permute(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.sequences))

    def next_step(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (inputs, targets) micro-batches of this rank for the next optimizer step."""
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self._permutation = self._permute(self.epoch)
        per_rank = self.micro_batch_size * self.grad_accum_steps
        start = self.step_in_epoch * self.global_batch + self.dp_rank * per_rank
        indices = self._permutation[start : start + per_rank]
        self.step_in_epoch += 1
        rows = np.stack([self.sequences[int(i)] for i in indices]).astype(np.int64)
        return [
            (rows[i : i + self.micro_batch_size, :-1], rows[i : i + self.micro_batch_size, 1:])
            for i in range(0, per_rank, self.micro_batch_size)
        ]

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "fingerprint": self.sequences.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "global_batch", "fingerprint"):
            if state[key] != self.state_dict()[key]:
                raise DataError(
                    f"the checkpoint's loader was saved with {key}={state[key]!r}, this run has "
                    f"{self.state_dict()[key]!r}; resume with the same data and batch settings"
                )
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self._permutation = self._permute(self.epoch)
