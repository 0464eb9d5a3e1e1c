"""What identifies a run besides its config: the code's commit, the layout, the host, the versions.

Logged as MLflow tags when the run is created, so that two runs can be told
apart (or found to be the same) long after their folders are gone.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

import pretrain
from pretrain.config import Config
from pretrain.layout import JOB_ID_VARIABLE

# The tag that links a run to the job that trained it: `pretrain jobs status` finds the run by it.
JOB_TAG = "pretrain.job_id"

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def run_tags(config: Config) -> dict[str, str]:
    """MLflow's own tags (its UI's Source, User and Description) and ours."""
    commit, dirty = git_state(PROJECT_ROOT)
    job_id = os.environ.get(JOB_ID_VARIABLE)  # set by `pretrain submit` (and the Slurm script)
    tags = {
        "mlflow.source.name": "pretrain train",
        "mlflow.source.type": "JOB" if job_id else "LOCAL",
        "mlflow.user": user_name(),
        "mlflow.note.content": config.tracking.description or describe_run(config),
        "git.dirty": dirty,
        "world_size": str(config.world_size),
        "layout": layout_tag(config),
        "host": socket.gethostname(),
        "version.python": platform.python_version(),
        "version.pretrain": pretrain.__version__,
    }
    for package in ("torch", "deepspeed", "mlflow"):
        tags[f"version.{package}"] = package_version(package)
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if job_id:  # links the run to `pretrain jobs status`
        tags[JOB_TAG] = job_id
    return tags


def layout_tag(config: Config) -> str:
    """dp2-tp1-zero1: how the ranks split the work; with sequence parallelism, dp1-sp2-tp1-zero1."""
    parallel = config.parallel
    sp = f"-sp{parallel.sequence_parallel_size}" if parallel.sequence_parallel_size > 1 else ""
    return f"dp{config.dp_size}{sp}-tp{parallel.tensor_parallel_size}-zero{parallel.zero_stage}"


def describe_run(config: Config) -> str:
    """One line on what the run trains: the model's shape, the data, the steps and the layout."""
    model, train = config.model, config.train
    return (
        f"GPT {model.n_layer} layers x {model.n_embd} wide ({model.pos_encoding}, {model.norm}, {model.mlp}), "
        f"{train.max_steps} steps of {train.global_batch_size} x {train.seq_len} tokens on "
        f"{Path(config.data.output_dir).name}, {config.world_size} rank(s)"
    )


def user_name() -> str:
    """Who started the run, as MLflow's own runs say it; "unknown" in a container without a user entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def git_state(root: Path) -> tuple[str, str]:
    """The commit checked out in `root` and whether tracked files differ from it ("true"/"false").

    Both are "unknown" when `root` is not a git checkout (an installed package,
    a copy) or git cannot tell. `root` itself must hold `.git`: git would
    otherwise answer for whatever repository encloses it.
    """
    if not (root / ".git").exists():
        return "unknown", "unknown"
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, "true" if changes else "false"


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30)
    return result.stdout.strip()


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
