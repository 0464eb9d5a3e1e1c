"""A run folder's own files, besides its checkpoints: the lock, the config and its history, the summary.

    <checkpoint.root>/<tracking.run_name>/
      .lock                   held by the run's rank 0 (and `pretrain runs sync`): one writer at a time
      config.yaml             the config the run trains with now (secrets redacted)
      config_history/         earlier config.yaml files, one per resume that changed a setting
      deepspeed_config.json   generated from the config
      tokenizer.json          the dataset's tokenizer, so export does not depend on the data folder
      summary.json            written when the run finishes: steps, losses, checkpoint, sample
      checkpoints/            pretrain/checkpoint.py
      mlflow_spool/           pretrain/spool.py, while the MLflow server cannot be reached

config.yaml is written by rank 0 once it holds the lock and the checkpoint
it resumes from has loaded, so a resume that fails leaves the folder as it
was: still the config of its checkpoints.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from data_pipeline.locks import FolderLock
from data_pipeline.shards import TOKENIZER_NAME, write_text_atomically
from pretrain.config import Config, save_config

CONFIG_NAME = "config.yaml"
CONFIG_HISTORY = "config_history"
DEEPSPEED_CONFIG_NAME = "deepspeed_config.json"
SUMMARY_NAME = "summary.json"


def lock(run_dir: Path, purpose: str) -> FolderLock:
    """Hold the run folder, or raise FolderInUse naming the process that does."""
    return FolderLock(run_dir, purpose).acquire()


def write_config(config: Config, resumed_at: int | None) -> Path:
    """Write config.yaml; a different one written before is kept in config_history/, named by the step it ran to."""
    path = config.run_dir / CONFIG_NAME
    if resumed_at is not None and path.is_file() and path.read_text() != config.to_yaml():
        history = config.run_dir / CONFIG_HISTORY
        history.mkdir(exist_ok=True)
        kept = history / f"config.until_step_{resumed_at:08d}.yaml"
        for again in itertools.count(2):  # resumed at this step before: after a fall back, or a failed resume
            if not kept.exists():
                break
            kept = history / f"config.until_step_{resumed_at:08d}.{again}.yaml"
        shutil.copyfile(path, kept)
    return save_config(config, path)


def write_run_files(config: Config, data_dir: Path, deepspeed_json: dict, resumed_at: int | None) -> list[Path]:
    """The run folder's record of what runs: the resolved config, the DeepSpeed JSON and the tokenizer."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = write_text_atomically(run_dir / DEEPSPEED_CONFIG_NAME, json.dumps(deepspeed_json, indent=2) + "\n")
    tokenizer_path = run_dir / TOKENIZER_NAME
    shutil.copyfile(data_dir / TOKENIZER_NAME, tokenizer_path.with_name(TOKENIZER_NAME + ".tmp"))
    tokenizer_path.with_name(TOKENIZER_NAME + ".tmp").replace(tokenizer_path)
    return [write_config(config, resumed_at), ds_path, tokenizer_path]


def write_summary(run_dir: Path, summary: dict) -> Path:
    return write_text_atomically(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json; empty while the run has not finished."""
    try:
        return json.loads((run_dir / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return {}
