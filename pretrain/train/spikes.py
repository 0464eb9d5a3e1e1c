"""Loss spikes: logged, skipped, or rolled back past (`train.spike.action`).

A spike is a step whose loss is more than `train.spike.factor` times the
median of the recent ones. With `log` it is found at log intervals only (the
loss crosses to the host there anyway) and reported as `loss_spike`
(pretrain/train/metrics.py). `skip` and `rollback` must know before the
update is applied, so the step's mean loss over ranks is read every step,
after the last micro-batch's forward pass and before its backward pass; a
spiking step's last backward pass then gets a NaN loss, so the optimizer
refuses the whole update as it refuses any non-finite one
(pretrain/train/stability.py) and the schedule does not advance. `rollback`
then also restores the last checkpoint and moves the data past the samples
read since (PaLM's remedy: the spike comes from those batches meeting those
weights), at most `max_rollbacks` times.
"""

from __future__ import annotations

from collections import deque

from pretrain.config.schema import SpikeConfig
from pretrain.errors import TrainingError
from pretrain.train.metrics import SPIKE_WINDOW, spike_ratio


class SpikeWatch:
    """Decides, every step, whether the step's loss is a spike."""

    def __init__(self, settings: SpikeConfig):
        self.settings = settings
        self.recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.ratio: float | None = None  # the last step's, when it spiked
        self.spiked_steps: list[int] = []

    def check(self, loss: float) -> bool:
        """Whether the step's loss (the mean over ranks: every rank decides alike) spikes; a spike is not
        remembered as recent, so a run of them is measured against the losses before it."""
        self.ratio = spike_ratio(loss, self.recent, self.settings.factor)
        if self.ratio is None:
            self.recent.append(loss)
        return self.ratio is not None

    def rolled_back(self, step: int) -> None:
        """Count a rollback after a spike at `step`; past the limit, stop the run naming the steps."""
        self.spiked_steps.append(step)
        if len(self.spiked_steps) > self.settings.max_rollbacks:
            steps = ", ".join(map(str, self.spiked_steps))
            raise TrainingError(
                f"the loss spiked at steps {steps}: more than train.spike.max_rollbacks = "
                f"{self.settings.max_rollbacks} rollbacks. The data past each was skipped and the spikes came "
                f"back: lower optimizer.lr or raise lr_schedule.warmup_steps, then run the same command"
            )
