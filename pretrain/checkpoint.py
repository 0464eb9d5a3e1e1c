"""Saving and restoring training state through DeepSpeed checkpoints.

DeepSpeed saves the model, optimizer and LR-scheduler shards of every rank.
What it does not know about travels as client state: the step, tokens seen,
the data loader's position, RNG states, the resolved config and the MLflow
run id, so a resumed run continues the same data order and the same run.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pretrain.errors import CheckpointError

LATEST = "latest"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def save(engine, run_dir: Path, step: int, client_state: dict, keep_last: int) -> Path:
    """Save a checkpoint of all ranks (a collective call) and keep only the last `keep_last`."""
    directory = checkpoint_dir(run_dir)
    tag = tag_for(step)
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state | {"rng": rng_states()})
    if engine.global_rank == 0:
        tags = sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith("step_"))
        for old in tags[:-keep_last]:
            shutil.rmtree(old)
    return directory / tag


def latest_tag(run_dir: Path) -> str | None:
    path = checkpoint_dir(run_dir) / LATEST
    return path.read_text().strip() if path.is_file() else None


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run must not overwrite another's checkpoints; a resumed one needs one."""
    if resume and latest_tag(run_dir) is None:
        raise CheckpointError(
            f"{checkpoint_dir(run_dir)}: no checkpoint to resume from; run without --resume to start afresh"
        )
    if not resume and latest_tag(run_dir) is not None:
        raise CheckpointError(
            f"{run_dir}: this run folder already holds checkpoints; pass --resume to continue it, "
            f"or choose another tracking.run_name"
        )


def load(engine, run_dir: Path) -> dict:
    """Load the latest checkpoint into the engine; return its client state."""
    check_run_dir(run_dir, resume=True)
    tag = latest_tag(run_dir)
    _, client_state = engine.load_checkpoint(str(checkpoint_dir(run_dir)), tag=tag)
    if client_state is None:
        raise CheckpointError(f"{checkpoint_dir(run_dir) / tag}: the checkpoint could not be loaded")
    restore_rng_states(client_state["rng"])
    return client_state
