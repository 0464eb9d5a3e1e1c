"""Launch targets: where a submitted job runs, behind one interface and one registry.

A target is a module of launch/ with five functions:

    check(launch: LaunchConfig) -> None
                                     what the target needs of the settings (a cluster's address), checked
                                     before the job is prepared: a LaunchError says what to set
    submit(job: JobSpec, dry_run: bool) -> JobRecord | str | dict
                                     the record of the job started, or, for a dry run, what would be
                                     submitted (a script, or a request that pretrain redacts and prints)
    state(record) -> JobState        asked of the scheduler itself, every time
    logs(record, tail) -> str
    cancel(record) -> str            what was done, in words

and its line in TARGETS. `pretrain submit` hands a target a JobSpec (what each
process runs, and what the record links to) and records what comes back;
`pretrain jobs` finds the target of a record here. `multinode` is no module:
a job over several hosts runs in the foreground on each (`pretrain train
--node-rank K`), with nothing to record.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from launch.jobs import JobRecord

if TYPE_CHECKING:  # launch/config.py reads TARGET_NAMES from here
    from launch.config import LaunchConfig

TARGETS = {"local": "launch.detached", "slurm": "launch.slurm", "ray": "launch.ray_jobs"}
FOREGROUND_ONLY = ("multinode",)
TARGET_NAMES = ("local", *FOREGROUND_ONLY, *(name for name in TARGETS if name != "local"))


@dataclass
class JobSpec:
    """A job as pretrain hands it to a target: what each process runs, and what its record links to."""

    name: str  # the run name (or `data`) and the time: readable, and different for each submission
    stage: str  # train | data (a data build: one process)
    module: str  # every process runs `python -m MODULE ARGS`
    args: list[str]
    config_path: Path  # the resolved config the job runs
    launch: LaunchConfig
    run_name: str
    run_dir: Path
    tracking_uri: str
    experiment: str
    project_root: Path  # a Ray job's working directory
    ray_train_module: str  # on Ray, a training job's driver: `python -m RAY_TRAIN_MODULE ARGS[1:]`
    log_file: Path  # a local job's output: <run folder>/job.log for training, <jobs folder>/<name>.log else
    finished_marker: Path | None = None  # a training job that exits 0 without it stopped early (Slurm requeues)

    @property
    def train(self) -> bool:
        return self.stage == "train"

    @property
    def outputs(self) -> Path:
        """Where the job's log and scripts go: the run folder of a training job, else the jobs folder."""
        return self.run_dir if self.train else Path(self.launch.jobs_dir)

    def record(self, target: str, job_id: str, **fields) -> JobRecord:
        return JobRecord(
            target=target,
            job_id=job_id,
            run_name=self.run_name,
            run_dir=str(self.run_dir),
            config=str(self.config_path),
            tracking_uri=self.tracking_uri,
            experiment=self.experiment,
            stage=self.stage,
            **fields,
        )


def target(name: str) -> ModuleType:
    return importlib.import_module(TARGETS[name])
