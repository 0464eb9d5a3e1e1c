"""Runs interrupted as machines and schedulers interrupt them (kill -9 during a save or after a step, SIGTERM,
the launcher killed) resume to exactly the run that was not interrupted.
"""

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from mlflow import MlflowClient

from pretrain.layout import MARKER_NAME
from pretrain.weights.checkpoint_folder import checkpoint_dir, latest_tag
from tests.helpers import (
    LAYOUT_RUN,
    TWO_RANKS_ZERO1,
    logged_metric,
    pretrain,
    read_until,
    steps_logged,
)

pytestmark = pytest.mark.slow


# A model big enough (11 M parameters, 130 MB of checkpoint) that a save takes long enough to be killed inside.
SLOW_SAVE = ["model.n_layer=6", "model.n_embd=384", "model.n_head=6"]


def kill_during_a_save(job, run_name: str) -> list[str]:
    """Start a 2-rank run that saves every step; kill -9 all its processes while a checkpoint is half written.

    Returns the checkpoint folders that were incomplete at the kill (empty if the kill came too late).
    """
    command = [sys.executable, "-m", "pretrain.cli", "train", *job["config"], f"tracking.run_name={run_name}"]
    command += [*SLOW_SAVE, "train.max_steps=40", "lr_schedule.warmup_steps=2", "checkpoint.every_steps=1"]
    process = subprocess.Popen(command, cwd=job["work"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    directory = checkpoint_dir(job["work"] / "runs" / run_name)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            # The second save or later: a complete checkpoint exists to fall back on.
            folders = sorted(directory.glob("step_*")) if directory.is_dir() else []
            if len(folders) >= 2 and any(not (f / MARKER_NAME).exists() and any(f.iterdir()) for f in folders):
                break
            time.sleep(0.002)
    finally:
        # The whole tree, as a machine that dies takes it: torchrun starts each rank in its own session.
        for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            child.send_signal(signal.SIGKILL)
        process.wait()
    return [f.name for f in sorted(directory.glob("step_*")) if not (f / MARKER_NAME).exists()]


def test_a_run_killed_during_a_save_resumes_from_the_last_complete_checkpoint(job):
    for attempt in range(3):  # the kill must land inside a save, a window of about a second
        run_name = f"killed-{attempt}"
        incomplete = kill_during_a_save(job, run_name)
        if incomplete:
            break
    assert incomplete, "no kill landed during a save in 3 attempts"
    run_dir = job["work"] / "runs" / run_name
    resumed_from = latest_tag(run_dir)
    assert resumed_from is not None and resumed_from not in incomplete
    # Two steps past the checkpoint are enough to see the run go on from it (a shorter schedule is a change a
    # resume may make); training the killed run's 40 steps of this larger model would take a minute more.
    last = int(resumed_from.removeprefix("step_")) + 2
    pretrain(
        "train",
        *job["config"],
        f"tracking.run_name={run_name}",
        "--resume",
        *SLOW_SAVE,
        f"train.max_steps={last}",
        "lr_schedule.warmup_steps=2",
        "checkpoint.every_steps=0",
        "checkpoint.keep_last=2",
        cwd=job["work"],
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == last
    folders = sorted(p.name for p in checkpoint_dir(run_dir).glob("step_*"))
    assert folders[-1] == f"step_{last:08d}" and latest_tag(run_dir) == f"step_{last:08d}"
    assert not set(incomplete) & set(folders)  # what the killed save left is gone


def test_killing_the_train_command_takes_its_ranks_with_it(job):
    """kill -9 of `pretrain train` alone: torchrun and both ranks (each in a session of its own) die too."""
    command = [sys.executable, "-m", "pretrain.cli", "train", *job["config"], "tracking.run_name=orphans"]
    process = subprocess.Popen(
        [*command, "train.max_steps=100000", "eval.interval=100000"],
        cwd=job["work"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:  # wait until the ranks are training
        if line.startswith("step"):
            break
    descendants = psutil.Process(process.pid).children(recursive=True)
    assert sum("pretrain.cli" in " ".join(p.cmdline()) for p in descendants) >= 2  # torchrun's ranks
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]


def start_layout_run(job, name: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """The reference run's settings (2 ranks, ZeRO-1, ten steps), started in the background with its output piped."""
    command = [sys.executable, "-m", "pretrain.cli", "train", *job["config"], f"tracking.run_name={name}"]
    command += [*LAYOUT_RUN, *TWO_RANKS_ZERO1, *extra]
    return subprocess.Popen(
        command, cwd=job["work"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def rank_process(process: subprocess.Popen, rank: int) -> psutil.Process:
    """The process of one rank among a job's descendants (torchrun sets RANK in each rank's environment)."""
    for child in psutil.Process(process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank) and "pretrain.cli" in " ".join(child.cmdline()):
                return child
    raise AssertionError(f"no rank {rank} among the job's processes")


def test_a_straggler_is_named_a_spike_rolled_back_and_a_hung_rank_found_with_its_stack(job):
    """One run, three faults injected in turn (pretrain/train/faults.py): rank 1 is slow at every step, the
    batch of step 7 makes the loss spike, then rank 1 is stopped (SIGSTOP) for good."""
    faults = {"PRETRAIN_FAULT_SLOW_RANK": "1:0.2", "PRETRAIN_FAULT_SPIKE_AT_SAMPLE": str(6 * 16)}
    command = [sys.executable, "-m", "pretrain.cli", "train", *job["config"], "tracking.run_name=faults"]
    command += [*LAYOUT_RUN, *TWO_RANKS_ZERO1, "train.max_steps=60", "checkpoint.every_steps=5"]
    command += ["train.spike.action=rollback", "train.straggler_intervals=2", "train.hang_timeout_s=6"]
    env = os.environ | faults
    process = subprocess.Popen(
        command, cwd=job["work"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = read_until(process, "loss spike at step 7")
    assert "straggler: rank 1 spends" in output  # slow for 2 log intervals in a row
    assert "rolled back to step 5 and past the 32 samples read since" in output.splitlines()[-1]
    stopped = rank_process(process, 1)
    stopped.suspend()
    stopped_at = time.monotonic()
    try:
        output = read_until(process, "hang:")
        detected_in = time.monotonic() - stopped_at
        output += process.stdout.read()
        assert process.wait() != 0
        assert not stopped.is_running()  # killed once its stack was read: torchrun need not wait 30 s for it
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            stopped.kill()  # if torchrun has not
    assert detected_in < 6 + 5, output[-3000:]  # the timeout, then at most a heartbeat period and a check
    assert re.search(
        r"rank 1 \(.*, pid \d+\): step \d+, \w+, no progress for \d+ s; its process is not running", output
    )
    (hang,) = (job["work"] / "runs" / "faults" / "hangs").iterdir()
    assert "pretrain/train/step.py" in (hang / "stack-rank_00000.txt").read_text()  # waiting in the step
    assert "MainThread" in (hang / "stack-rank_00001.txt").read_text()  # read from outside, by py-spy
    client = MlflowClient(f"sqlite:///{job['work'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'faults'")
    assert run.info.status == "FAILED" and "rank 1" in run.data.tags["hang"]
    assert "rolled back to step 5" in run.data.tags["spike.step_7"]
    slowest = client.get_metric_history(run.info.run_id, "perf/slowest_rank")
    assert slowest and all(metric.value == 1 for metric in slowest)


def test_a_killed_rank_is_restarted_then_sigterm_saves_and_the_same_command_continues_exactly(job, two_rank_losses):
    """launch.max_restarts=1 and a kill -9 of one rank (not of the launcher) at a random step after the first
    checkpoint: torchrun starts every rank again and they continue from the last complete checkpoint. Then
    SIGTERM to `pretrain train` (what Slurm sends before a time limit): the step finishes, a checkpoint is saved,
    the command exits 0, and the same command continues to the end. One MLflow run, every step logged once,
    with the loss of the uninterrupted run, bit for bit."""
    kill_at = random.randint(3, 6)  # checkpoints every 2 steps: the first at step 2
    settings = ("checkpoint.every_steps=2", "checkpoint.keep_last=5", "launch.max_restarts=1")
    slow = {"PRETRAIN_FAULT_SLOW_RANK": "0:0.3"}  # time for the kill, the restart and then the signal
    process = start_layout_run(job, "interrupted", *settings, env=os.environ | slow)
    output = read_until(process, f"step {kill_at:>6}/10")
    rank_process(process, 1).send_signal(signal.SIGKILL)
    output += read_until(process, "resumed from checkpoint step_")
    output += read_until(process, "step ")  # training again
    process.send_signal(signal.SIGTERM)
    output += process.stdout.read()
    assert process.wait() == 0, f"killed at step {kill_at}:\n{output[-3000:]}"
    stopped = re.search(r"SIGTERM: stopped after step (\d+), saved (\S+); run the same command to continue", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert step < 10
    run_dir = job["work"] / "runs" / "interrupted"
    assert latest_tag(run_dir) == f"step_{step:08d}"
    assert "stopped before the end; run the same command again to continue" in output
    client = MlflowClient(f"sqlite:///{job['work'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'interrupted'")
    assert run.info.status == "KILLED"
    # The same command again: a run folder with a checkpoint is continued, as a requeued job needs.
    command = ["train", *job["config"], "tracking.run_name=interrupted", *LAYOUT_RUN, *TWO_RANKS_ZERO1, *settings]
    finished = pretrain(*command, cwd=job["work"])
    assert "step     10/10" in finished.stdout
    assert steps_logged(job["work"], "interrupted") == list(range(1, 11)), f"killed at step {kill_at}"
    assert list(logged_metric(job["work"], "interrupted").values()) == two_rank_losses
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
