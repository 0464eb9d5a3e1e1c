"""What the loop does about ranks and losses that go wrong: hangs, stragglers and loss spikes.

The detectors are their own modules (pretrain/train/heartbeat.py,
stragglers.py, spikes.py); this is where the loop starts them and acts on
what they find: printing, tagging the MLflow run, rolling back.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import torch.distributed as dist

from pretrain.config import Config
from pretrain.layout import HANGS_DIR
from pretrain.train.console import Console
from pretrain.train.heartbeat import Heartbeat
from pretrain.train.progress import Progress, restore
from pretrain.train.stragglers import StragglerWatch
from pretrain.weights.checkpoint_folder import latest_tag


def start_heartbeat(config: Config, tracker) -> Heartbeat | None:
    """Hang detection (pretrain/train/heartbeat.py), when train.hang_timeout_s is set."""
    if not config.train.hang_timeout_s:
        return None

    def report(message: str, folder: Path) -> None:
        print(message, file=sys.stderr, flush=True)
        if tracker:
            tracker.set_tags({"hang": message[:5000]})
            for path in sorted(folder.iterdir()):
                tracker.log_artifact(path, f"{HANGS_DIR}/{folder.name}")
            tracker.finish("FAILED")

    rank, world_size = dist.get_rank(), dist.get_world_size()
    # Rank 0 names this start of the job, so that each rank tells this attempt's heartbeats from the files an
    # earlier one left (a restart after a failure or a hang); a collective, as the loop's first step is anyway.
    attempt = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(attempt, src=0)
    return Heartbeat(config.run_dir, rank, world_size, config.train.hang_timeout_s, report, attempt[0]).start()


def straggler_metrics(stragglers: StragglerWatch, world_size: int, console: Console | None) -> dict:
    """Per-rank times at a log interval (a collective call); a straggler, once named, is printed."""
    if world_size == 1:
        return {}
    metrics, straggler = stragglers.report()
    if straggler and console:
        console.line(straggler)
    return metrics


def handle_spike(config: Config, engine, loader, progress: Progress, tracker, console, spikes) -> bool:
    """The step spiked, and was not applied (pretrain/train/spikes.py): say so; with `rollback`, go back to the
    last checkpoint and on past the samples read since. Whether it rolled back."""
    spiked, ratio = progress.step, spikes.ratio
    said = f"loss spike at step {spiked}: {ratio:.1f}x the recent median"
    if config.train.spike.action == "rollback" and latest_tag(config.run_dir) is not None:
        spikes.rolled_back(spiked)
        consumed = loader.consumed
        restore(config, engine, loader, progress)
        progress.logged_through = progress.step  # the steps trained again are logged again, with their new losses
        skipped = consumed - loader.consumed
        loader.consumed = consumed  # past the samples since the checkpoint: the data order stays a function of it
        said += (
            f"; rolled back to step {progress.step} and past the {skipped} samples read since "
            f"(train.spike.action=rollback, {len(spikes.spiked_steps)} of {config.train.spike.max_rollbacks})"
        )
    else:
        said += f"; the step was not applied (train.spike.action={config.train.spike.action})"
    if console:
        console.line(said)
    if tracker:
        tracker.set_tags({f"spike.step_{spiked}": said})
    return progress.step < spiked
