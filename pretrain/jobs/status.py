"""`pretrain jobs`: submitted jobs, with their state from the scheduler and their MLflow run.

The records (launch/jobs.py) link a job to its config and run folder; this
module adds what only `pretrain` knows: which MLflow run the job's training
created (the run is tagged `pretrain.job_id`) and how it ended (summary.json).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from launch.errors import LaunchError
from launch.jobs import JobRecord, JobState, find_record, load_records, tail_lines
from launch.targets import target
from pretrain.layout import read_summary
from pretrain.tracking import backend


def jobs_command(action: str, jobs_dir: Path, job_id: str | None, tail: int | None) -> str:
    if action == "list":
        return list_jobs(jobs_dir)
    record = find_record(jobs_dir, job_id)
    if action == "status":
        return describe_job(record)
    if action == "logs":
        return target(record.target).logs(record, tail).rstrip("\n")
    return target(record.target).cancel(record)


def follow_logs(jobs_dir: Path, job_id: str, tail: int | None, poll_s: float = 1.0) -> JobState:
    """Print the job's output as it grows, until its scheduler says it has ended; return that state.

    The same for every target: their `logs` return the whole output so far,
    and what was printed already is left out. The state is asked before the
    output is read, so the last read, made after the end, has all of it.
    """
    record = find_record(jobs_dir, job_id)
    chosen, printed = target(record.target), None
    while True:
        state = chosen.state(record)
        text = chosen.logs(record, None)
        if printed is None:
            sys.stdout.write(tail_lines(text, tail))
        elif len(text) < printed:  # a log started anew (a requeued job)
            sys.stdout.write(text)
        else:
            sys.stdout.write(text[printed:])
        sys.stdout.flush()
        printed = len(text)
        if not state.active:
            print(f"job {record.job_id} ended: {state}", file=sys.stderr, flush=True)
            return state
        time.sleep(poll_s)


def state_or_reason(record: JobRecord) -> str:
    """The scheduler's state; when it cannot be asked, why, in place of the state."""
    try:
        return str(target(record.target).state(record))
    except LaunchError as err:
        return f"UNKNOWN ({err})"


def list_jobs(jobs_dir: Path) -> str:
    records = load_records(jobs_dir) if jobs_dir.is_dir() else []
    if not records:
        return f"no jobs recorded in {jobs_dir}; `pretrain submit` records each job it submits"
    rows = [("JOB ID", "TARGET", "STAGE", "SUBMITTED", "RUN", "STATE")]
    rows += [
        (r.job_id, r.target, r.stage, r.submitted, r.run_name if r.stage == "train" else "-", state_or_reason(r))
        for r in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows)


def describe_job(record: JobRecord) -> str:
    lines = [
        f"job:        {record.target} {record.job_id} ({record.stage}), submitted {record.submitted}",
        f"state:      {state_or_reason(record)}",
        f"config:     {record.config}",
    ]
    if record.log:
        lines.append(f"log:        {record.log}")
    if record.stage == "train":
        lines += [
            f"run folder: {record.run_dir}",
            f"MLflow run: {backend().job_run(record.tracking_uri, record.experiment, record.mlflow_job_tag)}",
        ]
        summary = read_summary(Path(record.run_dir))
        if summary:
            lines.append(
                f"finished:   {summary['steps']} steps, train loss {summary['train_loss']:.4f}, "
                f"validation loss {summary['val_loss']:.4f}"
            )
    return "\n".join(lines)
