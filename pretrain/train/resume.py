"""Continuing a run: whether it resumes, what its config may change, and what it may not.

A run folder that holds a complete checkpoint is continued from it with the
config given now. What may change takes effect: the learning-rate schedule
(`optimizer.lr`, `lr_schedule.*`, `train.max_steps`) is rebuilt at the
current step, the optimizer takes the rest of `optimizer.*`, and the rest
(`eval.*`, `sample.*`, `export.*`, checkpointing, intervals, micro-batch size
and accumulation, compile...) is read as the loop goes. What the checkpoint fixes cannot change, and is compared before any
process starts (`fixed_problems`):

- the model (`model.*` but `dropout`): the checkpoint's weights have its shapes;
- how the optimizer keeps its state (`parallel.offload_optimizer`,
  `train.precision`). The layout itself (the world size, the ZeRO stage, the
  tensor-parallel degree) may change between ZeRO stages 1, 2 and 3: the
  checkpoint is resharded (pretrain/weights/layout_change.py, reshard.py);
- the data order (`train.seq_len`, `train.global_batch_size`, `train.seed`,
  `train.mixture`, and the dataset itself): sample i of the stream is a
  function of these, and the checkpoint holds how many samples were used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pretrain.config import Config
from pretrain.config.schema import with_moved_keys
from pretrain.errors import CheckpointError, ConfigError
from pretrain.layout import CONFIG_NAME, read_summary
from pretrain.tracking.run_info import flatten
from pretrain.weights.checkpoint_folder import candidates, checkpoint_dir, latest_tag, saved_info, step_of
from pretrain.weights.layout_change import Layout, reshard_problem

WORLD_SIZE = "launch.nnodes x launch.nproc_per_node"
FIXED_SETTINGS = (
    "parallel.zero_stage",
    "parallel.tensor_parallel_size",
    "parallel.offload_optimizer",
    "train.precision",
    "train.seq_len",
    "train.global_batch_size",
    "train.seed",
)
# What a checkpoint is sharded for: changes that resharding carries over (reshard_problem says which).
LAYOUT_SETTINGS = (WORLD_SIZE, "parallel.zero_stage", "parallel.tensor_parallel_size")
# What a resumed run reports as changed: the settings of training itself, not where files are.
REPORTED_SECTIONS = (
    *("model.", "train.", "optimizer.", "lr_schedule.", "eval.", "sample.", "export."),
    *("parallel.", "checkpoint."),
)
NOT_REPORTED = ("train.init_from", "checkpoint.root")


def resolve_resume(run_dir: Path, required: bool, max_steps: int) -> bool:
    """Whether the run continues from a checkpoint: whenever its folder holds a complete one.

    So a requeued or restarted job only has to run the same command again.
    A run whose last checkpoint is at `max_steps` but which never wrote its
    summary (killed while finishing) is continued too, to finish it. With
    `required` (--resume) a missing checkpoint is an error; a finished run is
    one too, since training it on needs more steps.
    """
    tag = latest_tag(run_dir)
    if tag is None:
        if required:
            raise CheckpointError(
                f"{checkpoint_dir(run_dir)}: no checkpoint to resume from; run without --resume to start afresh"
            )
        return False
    step = step_of(tag)
    if step > max_steps or (step == max_steps and finished_at(run_dir) >= step):
        raise CheckpointError(
            f"{run_dir}: this run already finished (checkpoint {tag}, train.max_steps = {max_steps}); "
            f"raise train.max_steps to train it on, or choose another tracking.run_name for a new run"
        )
    return True


def finished_before_this_attempt(run_dir: Path, max_steps: int) -> bool:
    """Whether this is a restart (torchrun's elastic agent counts them) of a job whose run has finished.

    A rank that fails after the end (in the last barrier), or an agent that
    joins one more rendezvous round as the others leave, restarts ranks
    of a finished run: they have nothing to do, which is not an error.
    """
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    return restarted and finished_at(run_dir) >= max_steps


def finished_at(run_dir: Path) -> int:
    """The step the run's summary.json reports it finished at; -1 without one."""
    return int(read_summary(run_dir).get("steps", -1))


def with_defaults(saved: dict) -> dict:
    """A checkpoint's config with the defaults of settings added since it was saved."""
    try:
        return Config.model_validate(with_moved_keys(saved)).to_public_dict()
    except ValidationError:  # written by a version with other settings: compared as it is
        return saved


def saved_settings(saved: dict) -> dict[str, str]:
    """A checkpoint's config, flat (values as text, as MLflow's parameters), with the defaults of settings
    added since it was saved."""
    saved = with_defaults(saved)
    flat = flatten(saved)
    launch = saved.get("launch", {})
    flat[WORLD_SIZE] = str(launch.get("nnodes", 1) * launch.get("nproc_per_node", 1))
    return flat


def current_settings(config: Config) -> dict[str, str]:
    return flatten(config.to_public_dict()) | {WORLD_SIZE: str(config.world_size)}


def is_fixed(key: str) -> bool:
    return (
        key in FIXED_SETTINGS
        or key == WORLD_SIZE
        or key.startswith("train.mixture.")
        or (key.startswith("model.") and key != "model.dropout")
    )


def differences(saved: dict, config: Config) -> list[tuple[str, Any, Any]]:
    """(key, the checkpoint's value, this config's value) for each setting that differs."""
    before, now = saved_settings(saved), current_settings(config)
    keys = sorted(set(before) | set(now), key=lambda key: (key != WORLD_SIZE, key))
    return [(key, before.get(key), now.get(key)) for key in keys if before.get(key) != now.get(key)]


def fixed_problems(saved: dict, config: Config, where: str) -> None:
    """Refuse, in one message that names each setting with both values, changes the checkpoint cannot take."""
    fixed = [(key, old, new) for key, old, new in differences(saved, config) if is_fixed(key)]
    layout_problem = reshard_problem(Layout.of(with_defaults(saved)), Layout.of(config.to_dict()))
    if layout_problem is None:
        fixed = [change for change in fixed if change[0] not in LAYOUT_SETTINGS]
    if not fixed:
        return
    lines = "\n".join(f"  {key}: {old} in the checkpoint, {new} now" for key, old, new in fixed)
    layout = f"The layout: {layout_problem}.\n" if layout_problem else ""
    raise ConfigError(
        f"{where}: cannot continue from this checkpoint with these settings, which it fixes:\n{lines}\n{layout}"
        f"The model fixes the shapes of its weights, train.precision and parallel.offload_optimizer how the "
        f"optimizer keeps its state, and "
        f"train.seq_len, global_batch_size, seed and mixture the order of the data. Set them back to continue "
        f"this run. To train with them, start a new run (another tracking.run_name), from this run's weights if "
        f"you like: `pretrain export --format torch`, then `pretrain train --init-from` the exported folder"
    )


def reported_changes(saved: dict, config: Config) -> list[tuple[str, Any, Any]]:
    """The settings a resumed run takes that differ from its checkpoint's, as logged and printed."""
    return [
        change
        for change in differences(saved, config)
        if change[0].startswith(REPORTED_SECTIONS) and change[0] not in NOT_REPORTED
    ]


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key} {old} -> {new}" for key, old, new in changes)


def saved_run(run_dir: Path) -> tuple[str, dict]:
    """The newest checkpoint whose marker reads, and that marker; a marker from before checksums
    gets the run folder's config.yaml (what the run last started with)."""
    for tag in candidates(run_dir):
        try:
            info = saved_info(run_dir, tag)
        except CheckpointError:
            continue  # damaged: the ranks will fall back past it too
        if "config" not in info:
            info["config"] = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
        return tag, info
    raise CheckpointError(f"{checkpoint_dir(run_dir)}: no checkpoint marker can be read")
