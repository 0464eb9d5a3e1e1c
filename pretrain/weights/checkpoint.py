"""Saving and restoring training state through DeepSpeed checkpoints, verified.

DeepSpeed saves the model, optimizer and LR-scheduler shards of every rank.
What it does not know about travels as client state: the step, tokens seen,
the data loader's position, RNG states, the resolved config and the MLflow
run id, so a resumed run continues the same data order and the same run.

A checkpoint is complete only once every rank's files are on disk: each rank
records the size and checksum of what it wrote (pretrain/weights/checkpoint_engine.py),
rank 0 gathers them into a `complete` marker in the checkpoint's folder
(pretrain/weights/checkpoint_files.py), and only then points `latest` at it (both
through a temporary file and a rename). DeepSpeed's own `latest` is a plain
write made while other ranks may still be saving, so it is turned off. A run
killed in the middle of a save leaves a folder without the marker, which
resume skips and the next save removes.

Before a checkpoint is loaded, its files are checked against the marker, the
ranks sharing the work. A damaged checkpoint is named, moved aside to
`corrupt-step_N` (never used again, never deleted by rotation) and the
previous complete one is used instead. Rotation keeps the newest
`keep_last` complete checkpoints.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pretrain.errors import CheckpointError, CheckpointRefused, on_every_rank
from pretrain.layout import LATEST_NAME, MARKER_NAME, write_atomically
from pretrain.weights.checkpoint_files import check_share, warn_unverified
from pretrain.weights.checkpoint_folder import (
    candidates,
    checkpoint_dir,
    prune,
    quarantine,
    read_marker,
    tag_for,
    write_marker,
)
from pretrain.weights.layout_change import Layout
from pretrain.weights.reshard import load_resharded


def rng_states() -> dict:
    """Every generator's state as tensors and plain lists, which a weights_only load rebuilds."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, keys.tolist(), position, has_gauss, cached_gaussian]
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])


def save(engine, run_dir: Path, step: int, client_state: dict, info: dict, keep_last: int) -> Path:
    """Save a checkpoint of all ranks (a collective call) and keep only the last `keep_last` complete ones.

    `info` goes into the marker besides the files: what export and resume read without loading the files.
    """
    directory, tag = checkpoint_dir(run_dir), tag_for(step)
    folder = directory / tag
    if (folder / MARKER_NAME).is_file():  # this step is saved already (a run resumed here and stopped at once)
        return folder
    if engine.global_rank == 0 and folder.exists():
        shutil.rmtree(folder)  # what a save killed at this step left
    dist.barrier()
    # save_checkpoint returns on every rank after a barrier that follows every rank's writes.
    engine.save_checkpoint(
        str(directory), tag=tag, client_state=client_state | {"rng": rng_states()}, save_latest=False
    )
    recorded = [None] * dist.get_world_size()
    dist.all_gather_object(recorded, (engine.checkpoint_engine.written, engine.checkpoint_engine.failures))
    failures = sorted({failure for _, rank_failures in recorded for failure in rank_failures})
    if failures:
        if engine.global_rank == 0:
            shutil.rmtree(folder, ignore_errors=True)  # the space the failed save took
        raise on_every_rank(CheckpointError("\n".join(failures)))
    if engine.global_rank == 0:
        files = {name: entry for rank_files, _ in recorded for name, entry in rank_files.items()}
        write_marker(folder, files, info)
        write_atomically(directory / LATEST_NAME, tag)
        prune(directory, keep_last)
    return folder


def verify_together(folder: Path) -> list[str]:
    """Check a checkpoint's files against its marker, each rank a share of them (a collective call).

    Returns the damage found; a file that would run code when loaded is
    refused on every rank at once (CheckpointError), since it means the
    folder was tampered with, not damaged.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        marker = read_marker(folder)
        damage, code = check_share(folder, marker, slice(rank, None, world_size), unlisted=rank == 0)
    except CheckpointError as err:
        marker, damage, code = {}, [str(err)], []
    everyone = [None] * world_size
    dist.all_gather_object(everyone, (damage, code))
    code = sorted({problem for _, rank_code in everyone for problem in rank_code})
    if code:
        raise on_every_rank(CheckpointRefused("\n".join(code)))
    if marker.get("files", {}) is None and rank == 0:
        warn_unverified(folder)
    return sorted({problem for rank_damage, _ in everyone for problem in rank_damage})


def load(engine, run_dir: Path, layout: Layout, say: Callable[[str], None] | None) -> tuple[str, dict]:
    """Load the newest intact checkpoint into the engine, which has `layout`; return its tag and client state.

    A damaged checkpoint is named (by `say`, rank 0's printer), moved aside,
    and the previous complete one is tried, as every rank does. One saved
    on another layout is converted for this one (pretrain/weights/reshard.py).
    """
    directory = checkpoint_dir(run_dir)
    for tag in candidates(run_dir):
        problems = verify_together(directory / tag)
        if not problems:
            break
        if dist.get_rank() == 0:
            moved = quarantine(directory / tag)
            (say or print)(
                f"checkpoint {tag} is damaged, so the previous one is used; it was moved to {moved}:\n  "
                + "\n  ".join(problems)
            )
        dist.barrier()
    else:
        raise on_every_rank(
            CheckpointError(
                f"{directory}: no intact checkpoint to resume from; move the run folder away to start afresh"
            )
        )
    saved_config = read_marker(directory / tag).get("config")
    saved = Layout.of(saved_config) if saved_config else layout  # a marker from before configs: never resharded
    if saved != layout:
        if dist.get_rank() == 0:
            (say or print)(f"checkpoint {tag} was saved on {saved.describe()}: resharding it for {layout.describe()}")
        client_state = load_resharded(engine, directory / tag)
    else:
        _, client_state = engine.load_checkpoint(str(directory), tag=tag)
    if client_state is None:
        raise CheckpointError(f"{directory / tag}: the checkpoint could not be loaded")
    restore_rng_states(client_state["rng"])
    return tag, client_state
