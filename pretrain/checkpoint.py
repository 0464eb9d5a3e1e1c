"""Saving and restoring training state through DeepSpeed checkpoints.

DeepSpeed saves the model, optimizer and LR-scheduler shards of every rank.
What it does not know about travels as client state: the step, tokens seen,
the data loader's position, RNG states, the resolved config and the MLflow
run id, so a resumed run continues the same data order and the same run.

A checkpoint is complete only once every rank's shards are on disk: then rank
0 writes a `complete` marker into its folder, and only then points `latest`
at it (both through a temporary file and a rename). DeepSpeed's own `latest`
is a plain write made while other ranks may still be saving, so it is turned
off. A run killed in the middle of a save leaves a folder without the marker,
which resume skips and the next save removes.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from data_pipeline.shards import write_text_atomically
from pretrain.errors import CheckpointError

LATEST = "latest"
COMPLETE = "complete"


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
    """Save a checkpoint of all ranks (a collective call) and keep only the last `keep_last` complete ones."""
    directory = checkpoint_dir(run_dir)
    tag = tag_for(step)
    client_state = client_state | {"rng": rng_states()}
    # save_checkpoint returns on every rank after a barrier that follows every rank's writes.
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
    if engine.global_rank == 0:
        write_text_atomically(directory / tag / COMPLETE, "")
        write_text_atomically(directory / LATEST, tag)
        _prune(directory, keep_last)
    return directory / tag


def complete_tags(directory: Path) -> list[str]:
    """The tags of complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if (p / COMPLETE).is_file())


def _prune(directory: Path, keep_last: int) -> None:
    """Remove all but the last `keep_last` complete checkpoints, and what killed saves left behind."""
    keep = set(complete_tags(directory)[-keep_last:])
    for path in directory.iterdir():
        if path.is_dir() and path.name.startswith("step_") and path.name not in keep:
            shutil.rmtree(path)


def latest_tag(run_dir: Path) -> str | None:
    """The newest complete checkpoint: the one `latest` names, or the newest with a marker if it is not complete."""
    directory = checkpoint_dir(run_dir)
    named = (directory / LATEST).read_text().strip() if (directory / LATEST).is_file() else None
    if named and (directory / named / COMPLETE).is_file():
        return named
    tags = complete_tags(directory)
    return tags[-1] if tags else None


def step_of(tag: str) -> int:
    return int(tag.removeprefix("step_"))


def resolve_resume(run_dir: Path, required: bool, max_steps: int) -> bool:
    """Whether the run continues from a checkpoint: whenever its folder holds a complete one.

    So a requeued or restarted job only has to run the same command again.
    With `required` (--resume) a missing checkpoint is an error; a run that
    already reached `max_steps` is one too, since training it on needs more steps.
    """
    tag = latest_tag(run_dir)
    if tag is None:
        if required:
            raise CheckpointError(
                f"{checkpoint_dir(run_dir)}: no checkpoint to resume from; run without --resume to start afresh"
            )
        return False
    if step_of(tag) >= max_steps:
        raise CheckpointError(
            f"{run_dir}: this run already finished (checkpoint {tag}, train.max_steps = {max_steps}); "
            f"raise train.max_steps to train it on, or choose another tracking.run_name for a new run"
        )
    return True


def load(engine, run_dir: Path) -> dict:
    """Load the latest checkpoint into the engine; return its client state."""
    tag = latest_tag(run_dir)
    if tag is None:
        raise CheckpointError(f"{checkpoint_dir(run_dir)}: no complete checkpoint to load")
    _, client_state = engine.load_checkpoint(str(checkpoint_dir(run_dir)), tag=tag)
    if client_state is None:
        raise CheckpointError(f"{checkpoint_dir(run_dir) / tag}: the checkpoint could not be loaded")
    restore_rng_states(client_state["rng"])
    return client_state
