"""A run's progress and its checkpoints, as the training loop sees them: what it saves, restores and exports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from data_pipeline.loader import BatchLoader
from pretrain.config import Config
from pretrain.export import periodic as periodic_export
from pretrain.layout import SUMMARY_NAME
from pretrain.train.optim import apply_settings
from pretrain.weights import checkpoint
from pretrain.weights.layout_change import Layout


@dataclass
class Progress:
    step: int = 0
    tokens_seen: int = 0
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    resumed_at: int | None = None  # the step of the checkpoint this run continued from
    logged_through: int = -1  # the last step the tracked run holds already, not logged again (start_tracking)


def restore(config: Config, engine, loader: BatchLoader, progress: Progress) -> tuple[str | None, dict]:
    """Load the newest intact checkpoint into the engine and the loader; return its MLflow run and config.

    The optimizer and schedule then take this config's settings (pretrain/train/resume.py).
    """
    layout_now, rank_zero = Layout.of(config.to_dict()), dist.get_rank() == 0
    tag, state = checkpoint.load(engine, config.run_dir, layout_now, print if rank_zero else None)
    if rank_zero:  # also what a restarted job (launch.max_restarts) says in its log
        print(f"resumed from checkpoint {tag} (step {state['step']} of {config.train.max_steps})", flush=True)
    loader.load_state_dict(state["loader"])
    progress.step, progress.tokens_seen = state["step"], state["tokens_seen"]
    progress.train_loss, progress.val_loss = known(state.get("train_loss")), known(state.get("val_loss"))
    progress.resumed_at = progress.step
    apply_settings(engine, config)
    if rank_zero and progress.step < config.train.max_steps:
        # It told of an earlier end (train.max_steps has been raised since); it is written again at the new one.
        (config.run_dir / SUMMARY_NAME).unlink(missing_ok=True)
    return state["mlflow_run_id"], state["config"]


def known(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def validates_at(config: Config, step: int) -> bool:
    """Validation runs every eval.interval steps and at the last."""
    return step % config.eval.interval == 0 or step == config.train.max_steps


def save_checkpoint(config: Config, engine, loader: BatchLoader, progress: Progress, tracker) -> Path:
    """Save every rank's state; the marker holds what export and resume read without loading the files."""
    info = {
        "step": progress.step,
        "tokens_seen": progress.tokens_seen,
        "config": config.to_public_dict(),
        "data_fingerprint": loader.fingerprint,
        "mlflow_run_id": tracker.run_id if tracker else None,
        # What a run finished from here reports (its summary), should its finish be cut short.
        "train_loss": None if math.isnan(progress.train_loss) else progress.train_loss,
        "val_loss": None if math.isnan(progress.val_loss) else progress.val_loss,
    }
    client_state = info | {"loader": loader.state_dict()}
    return checkpoint.save(engine, config.run_dir, progress.step, client_state, info, config.checkpoint.keep_last)


def export_if_due(config: Config, progress: Progress, say) -> None:
    """Export the checkpoint just saved when export.every says so (pretrain/export/periodic.py).

    `say` prints a line: rank 0 exports; the other ranks pass None and go on to wait at the next collective.
    """
    if say is None or not periodic_export.due(config, progress.step):
        return
    val_loss = progress.val_loss if validates_at(config, progress.step) else None
    say(periodic_export.export_saved_checkpoint(config, progress.step, val_loss))
