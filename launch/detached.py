"""Detached local jobs: `python -m launch.detached EXIT_FILE {ranks|process} -- COMMAND...`.

`pretrain submit --detach` starts this small supervisor in a session of its
own, writing to the job's log. It runs the command (a launcher and its ranks,
or one process such as a data build), passes a SIGTERM on (to the ranks, which
save a checkpoint and exit; or to the process), and writes the exit status to
EXIT_FILE, so `pretrain jobs status` can tell a finished job from a stopped,
cancelled, failed or killed one after the fact.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from data_pipeline.layout import write_json_atomically
from launch.config import LaunchConfig
from launch.errors import LaunchError
from launch.jobs import JOB_ID_VARIABLE, JobRecord, JobState, read_log
from launch.local import (
    NodeLayout,
    exit_with_parent,
    launcher_command,
    launcher_preexec,
    rank_environment,
    warn_if_oversubscribed,
)
from launch.signals import JobSignals
from launch.targets import JobSpec


def start(command: list[str], env: dict[str, str], log_file: Path, exit_file: Path, ranks: bool) -> psutil.Process:
    """Start the supervisor of `command`, detached, logging to `log_file`.

    `ranks`: the command is a launcher whose ranks handle SIGTERM themselves;
    otherwise it is one process, which SIGTERM stops.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    exit_file.unlink(missing_ok=True)
    kind = "ranks" if ranks else "process"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "launch.detached", str(exit_file), kind, "--", *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return psutil.Process(process.pid)


def check(launch: LaunchConfig) -> None:
    """Nothing to check: this machine is there."""


def submit(job: JobSpec, dry_run: bool) -> JobRecord | str:
    """This machine's ranks (or the data build's one process) under a supervisor that outlives `pretrain submit`."""
    if dry_run:
        return shlex.join(job_command(job))
    if job.train:
        warn_if_oversubscribed(job.launch.nproc_per_node)
    exit_file = job.log_file.with_name(f".{job.name}.exit")
    env = rank_environment(job.launch.nproc_per_node) | {JOB_ID_VARIABLE: f"local:{job.name}"}
    process = start(job_command(job), env, job.log_file, exit_file, ranks=job.train)
    print(f"started {job.launch.nproc_per_node} rank(s) under process {process.pid}; log: {job.log_file}")
    details = {"pid": process.pid, "create_time": process.create_time(), "exit_file": str(exit_file)}
    return job.record("local", job.name, log=str(job.log_file), details=details)


def job_command(job: JobSpec) -> list[str]:
    if not job.train:
        return [sys.executable, "-m", job.module, *job.args]
    launch = job.launch
    layout = NodeLayout(
        nproc_per_node=launch.nproc_per_node,
        nnodes=launch.nnodes,
        rdzv_endpoint=launch.rdzv_endpoint,
        rdzv_id=job.run_name,
        hostfile=launch.hostfile,
        max_restarts=launch.max_restarts,
    )
    return launcher_command(layout, job.module, job.args, launch.launcher)


def supervise(exit_file: Path, command: list[str], ranks: bool) -> int:
    if ranks:
        signals = JobSignals()  # from the start: a SIGTERM while the ranks start up reaches them too
        launcher = subprocess.Popen(command, preexec_fn=launcher_preexec(attached=True))  # noqa: PLW1509
        returncode, terminated = signals.wait(launcher), signals.sigterm
    else:
        terminated = False
        child = subprocess.Popen(command, preexec_fn=exit_with_parent)  # noqa: PLW1509

        def pass_on(signum, frame) -> None:
            nonlocal terminated
            terminated = True
            child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, pass_on)
        returncode = child.wait()
    write_json_atomically(exit_file, {"returncode": returncode, "sigterm": terminated})
    return returncode


def _supervisor(record: JobRecord) -> psutil.Process | None:
    """The job's supervisor while it runs; None once it is gone (a pid reused since is not it). An exited
    supervisor that nobody has reaped yet (a zombie: a process that asked about the job may have become its
    parent, as a subreaper) is gone too."""
    try:
        process = psutil.Process(record.details["pid"])
        if abs(process.create_time() - record.details["create_time"]) < 1 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.NoSuchProcess:
        pass
    return None


def state(record: JobRecord) -> JobState:
    # The supervisor is looked for before its exit file is read: it writes the file and then exits, so one
    # that is gone by the first look has written it by the second, unless it was killed.
    running = _supervisor(record) is not None
    exit_file = Path(record.details["exit_file"])
    if exit_file.is_file():
        ended = json.loads(exit_file.read_text())
        if ended["sigterm"] and ended["returncode"] == 0:
            return JobState("STOPPED", "by SIGTERM after saving a checkpoint; submit again to continue")
        if ended["sigterm"]:
            return JobState("CANCELLED", f"by SIGTERM, exit code {ended['returncode']}; submit again to resume")
        if ended["returncode"] != 0:
            return JobState("FAILED", f"exit code {ended['returncode']}")
        return JobState("SUCCEEDED")
    if running:
        return JobState("RUNNING", f"process {record.details['pid']}")
    return JobState("LOST", "its process is gone without an exit status: killed with SIGKILL, or the host rebooted")


def logs(record: JobRecord, tail: int | None) -> str:
    return read_log(Path(record.log), tail)


def cancel(record: JobRecord) -> str:
    process = _supervisor(record)
    if process is None:
        raise LaunchError(f"job {record.job_id} is not running ({state(record)}); there is nothing to cancel")
    process.send_signal(signal.SIGTERM)
    then = "the ranks save a checkpoint and exit" if record.stage == "train" else "it stops; submit it again to resume"
    return f"sent SIGTERM to job {record.job_id} (process {process.pid}): {then}"


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[2] not in ("ranks", "process") or sys.argv[3] != "--":
        sys.exit("usage: python -m launch.detached EXIT_FILE {ranks|process} -- COMMAND...")
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[4:], ranks=sys.argv[2] == "ranks"))
