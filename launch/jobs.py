"""Submitted jobs: a record of each, and its live state from the scheduler that runs it.

A record (one JSON file per job in `launch.jobs_dir`) holds only what links the
job to the rest of the project: its target and id, the config it runs, its run
folder and MLflow experiment. What a job is doing now (pending, running,
failed...) always comes from the scheduler itself: Slurm's controller, the Ray
cluster's Jobs API, or, for a detached local job, its supervising process.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.layout import write_json_atomically
from launch.errors import LaunchError

# The environment variable that tells the training run which job it is: its MLflow run is tagged with it.
JOB_ID_VARIABLE = "PRETRAIN_JOB_ID"


@dataclass
class JobRecord:
    target: str
    job_id: str
    run_name: str
    run_dir: str
    config: str  # the resolved config the job runs
    tracking_uri: str
    experiment: str
    stage: str = "train"  # train, or data (a data build)
    submitted: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    log: str | None = None  # where the job's output goes; Ray keeps its own
    details: dict = field(default_factory=dict)  # the target's own: a pid, a Ray address, a script

    @property
    def mlflow_job_tag(self) -> str:
        """The value of the `pretrain.job_id` tag the job's MLflow run carries."""
        return f"{self.target}:{self.job_id}"


# The schedulers' words for a job that has not ended yet (Slurm's, Ray's and launch/detached.py's): any other
# state is an end, or one that no later look will change (UNKNOWN, LOST).
ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "STOPPING"}
)


@dataclass
class JobState:
    state: str  # the scheduler's word: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, ...
    detail: str = ""  # an exit code, a reason, a node list

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def __str__(self) -> str:
        return f"{self.state} ({self.detail})" if self.detail else self.state


def save_record(jobs_dir: Path, record: JobRecord) -> Path:
    jobs_dir.mkdir(parents=True, exist_ok=True)
    return write_json_atomically(jobs_dir / f"{record.target}-{record.job_id}.json", dataclasses.asdict(record))


def load_records(jobs_dir: Path) -> list[JobRecord]:
    """Every recorded job, oldest first."""
    records = []
    for path in sorted(jobs_dir.glob("*.json")):
        try:
            records.append(JobRecord(**json.loads(path.read_text())))
        except (ValueError, TypeError) as err:
            raise LaunchError(f"{path}: not a job record ({err}); delete the file if it is not one") from None
    return sorted(records, key=lambda record: record.submitted)


def find_record(jobs_dir: Path, job_id: str) -> JobRecord:
    matches = [record for record in load_records(jobs_dir) if job_id in (record.job_id, record.mlflow_job_tag)]
    if not matches:
        raise LaunchError(
            f"no job {job_id!r} is recorded in {jobs_dir}; `pretrain jobs list` shows the recorded ones "
            f"(give --config or --jobs-dir if the jobs were submitted with another launch.jobs_dir)"
        )
    if len(matches) > 1:
        options = ", ".join(record.mlflow_job_tag for record in matches)
        raise LaunchError(f"job id {job_id!r} is ambiguous; give one of {options}")
    return matches[0]


def tail_lines(text: str, tail: int | None) -> str:
    return text if tail is None else "".join(text.splitlines(keepends=True)[-tail:])


def read_log(path: Path, tail: int | None) -> str:
    if not path.is_file():
        raise LaunchError(f"{path}: the job's log is not there (yet); a pending job has not written one")
    return tail_lines(path.read_text(errors="replace"), tail)
