"""The run folder's contract: every name in it, the job-id variable, and the one atomic writer.

    <checkpoint.root>/<tracking.run_name>/
      .lock                   held by the run's rank 0 (and `pretrain runs sync`): one writer at a time
      config.yaml             the config the run trains with now (secrets redacted)
      config_history/         earlier config.yaml files, one per resume that changed a setting
      deepspeed_config.json   generated from the config
      tokenizer.json          the dataset's tokenizer, so export does not depend on the data folder
      summary.json            written when the run finishes: steps, losses, checkpoint, sample
      job.log                 the output of a detached local job
      checkpoints/            latest, step_N/ each with its `complete` marker (pretrain/weights/checkpoint.py)
      export/                 `pretrain export`'s default output
      exports/step_N/         the periodic exports of export.every
      mlflow_spool/           while the MLflow server cannot be reached (pretrain/tracking/spool.py)
      heartbeats/             each rank's step and phase, every few seconds (pretrain/train/heartbeat.py)
      hangs/step_N/           what a hang left: the report and every rank's Python stack

A dataset folder's names are data_pipeline's own (data_pipeline/layout.py,
which may not import pretrain/); they are re-exported here with the atomic
writer, so that code in pretrain/ reads every file name from this module.
Nothing else in pretrain/ spells a file name of either folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.layout import (
    LOCK_NAME,
    MANIFEST_NAME,
    REJECTS_NAME,
    TOKENIZER_NAME,
    write_atomically,
    write_json_atomically,
)
from data_pipeline.locks import FolderLock
from launch.jobs import JOB_ID_VARIABLE

__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_HISTORY",
    "CONFIG_NAME",
    "DEEPSPEED_CONFIG_NAME",
    "EXPORTS_DIR",
    "EXPORT_DIR",
    "HANGS_DIR",
    "HEARTBEATS_DIR",
    "JOB_ID_VARIABLE",
    "JOB_LOG_NAME",
    "LATEST_NAME",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MARKER_NAME",
    "QUARANTINE_PREFIX",
    "REJECTS_NAME",
    "SPOOL_DIR",
    "SUMMARY_NAME",
    "TOKENIZER_NAME",
    "lock",
    "read_summary",
    "write_atomically",
    "write_json_atomically",
    "write_summary",
]

CONFIG_NAME = "config.yaml"
CONFIG_HISTORY = "config_history"
DEEPSPEED_CONFIG_NAME = "deepspeed_config.json"
SUMMARY_NAME = "summary.json"
JOB_LOG_NAME = "job.log"
CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"  # in checkpoints/: the tag of the newest complete checkpoint
MARKER_NAME = "complete"  # in checkpoints/step_N/: written last, with every file's checksum
QUARANTINE_PREFIX = "corrupt-"  # a damaged checkpoint, moved aside: corrupt-step_N
EXPORT_DIR = "export"
EXPORTS_DIR = "exports"
SPOOL_DIR = "mlflow_spool"
HEARTBEATS_DIR = "heartbeats"
HANGS_DIR = "hangs"


def lock(run_dir: Path, purpose: str) -> FolderLock:
    """Hold the run folder, or raise FolderInUse naming the process that does."""
    return FolderLock(run_dir, purpose).acquire()


def write_summary(run_dir: Path, summary: dict) -> Path:
    return write_atomically(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json; empty while the run has not finished."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return {}
