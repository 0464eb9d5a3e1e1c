"""Steps whose loss or gradient norm is not finite are skipped, counted, and stop a run that keeps making them.

DeepSpeed's ZeRO and mixed-precision optimizers already refuse to apply
gradients whose norm is not finite (a NaN loss makes NaN gradients): the
step is skipped, the learning-rate schedule does not advance, and the engine
counts it in `skipped_steps`. Without ZeRO, in fp32 or under autocast,
DeepSpeed steps our own optimizer, which does the same check
(`pretrain.train.optim.AdamW`). A skipped
step leaves the weights as they were, so after `limit` consecutive ones the
run saves them (from before the trouble) and stops with an error.
"""

from __future__ import annotations


class NonFiniteSteps:
    """Watches the engine's skipped-step counter after each optimizer step."""

    def __init__(self, engine, limit: int):
        self.engine, self.limit = engine, limit
        self._seen = engine.skipped_steps
        self.total = 0
        self.consecutive = 0
        self.first_of_run: int | None = None  # the first step of the current run of skipped steps

    def record(self, step: int) -> bool:
        """Account for optimizer step `step`; return whether it was skipped."""
        skipped = self.engine.skipped_steps > self._seen
        self._seen = self.engine.skipped_steps
        if not skipped:
            self.consecutive, self.first_of_run = 0, None
            return False
        self.total += 1
        self.consecutive += 1
        self.first_of_run = self.first_of_run or step
        return True

    def refused(self) -> None:
        """Account for a step the loop itself had refused (a loss spike, pretrain/train/spikes.py): counted as
        skipped, but not as non-finite, so it brings the run no nearer to stopping."""
        self._seen = self.engine.skipped_steps
        self.total += 1

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.limit
