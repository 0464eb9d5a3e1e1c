"""The names a run's metrics have in MLflow, grouped by prefix: one table, which docs/tracking.md lists.

The training loop reports short keys (`loss`, `val_loss`, `tokens_per_s`);
MLflow shows a prefix before a slash as a section of the run's charts and a
group of the runs table's columns, so each key is logged under its group:
`train/` what the optimizer sees, `eval/` validation, `perf/` speed and
memory. `system/` (pretrain/tracking/system_metrics.py) is MLflow's own group.
Runs logged before these names (`loss`, `val_loss`, ...) keep their names and
load as they are; a resumed one logs the new names from then on.
"""

from __future__ import annotations

METRIC_NAMES = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_seen": "train/tokens_seen",
    "skipped_steps": "train/skipped_steps",
    "loss_spike": "train/loss_spike",
    "val_loss": "eval/loss",
    "val_perplexity": "eval/perplexity",
    "val_sequences": "eval/sequences",
    "val_tokens": "eval/tokens",
    "tokens_per_s": "perf/tokens_per_s",
    "step_time_s": "perf/step_time_s",
    "mfu": "perf/mfu",
    "eta_s": "perf/eta_s",
    "elapsed_s": "perf/elapsed_s",
    "memory_peak_gb": "perf/memory_peak_gb",
    "memory_reserved_gb": "perf/memory_reserved_gb",
    "rank_time_min_s": "perf/rank_time_min_s",
    "rank_time_median_s": "perf/rank_time_median_s",
    "rank_time_max_s": "perf/rank_time_max_s",
    "slowest_rank": "perf/slowest_rank",
}
TRAIN_LOSS, VAL_LOSS, LEARNING_RATE = METRIC_NAMES["loss"], METRIC_NAMES["val_loss"], METRIC_NAMES["lr"]


def tracked_name(key: str) -> str:
    """The MLflow name of a loop's metric key; a key already grouped (`system/...`) is its own name."""
    return METRIC_NAMES.get(key, key)


def names_to_read(name: str) -> tuple[str, ...]:
    """The names `name` may have in a run: its own, then the one runs logged before the groups."""
    earlier = [key for key, grouped in METRIC_NAMES.items() if grouped == name]
    return (name, *earlier)
