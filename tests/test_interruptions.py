"""Runs interrupted as machines and schedulers interrupt them (kill -9 during a save or after a step, SIGTERM,
the launcher killed) resume to exactly the run that was not interrupted.
"""

import json
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


def start_layout_run(job, name: str, *extra: str) -> subprocess.Popen:
    """The reference run's settings (2 ranks, ZeRO-1, ten steps), started in the background with its output piped."""
    command = [sys.executable, "-m", "pretrain.cli", "train", *job["config"], f"tracking.run_name={name}"]
    command += [*LAYOUT_RUN, *TWO_RANKS_ZERO1, *extra]
    return subprocess.Popen(command, cwd=job["work"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_run_killed_after_a_step_resumes_to_the_same_losses_bit_for_bit(job, two_rank_losses):
    """kill -9 after step 6, resume from the step-4 checkpoint: every step's loss equals the uninterrupted run's."""
    process = start_layout_run(job, "killed-at-6", "checkpoint.every_steps=2", "checkpoint.keep_last=5")
    read_until(process, "step      6/10")
    for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
        child.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = job["work"] / "runs" / "killed-at-6"
    assert latest_tag(run_dir) in ("step_00000004", "step_00000006")
    resumed = pretrain(
        "train",
        *job["config"],
        "tracking.run_name=killed-at-6",
        *LAYOUT_RUN,
        *TWO_RANKS_ZERO1,
        "checkpoint.every_steps=2",
        "--resume",
        cwd=job["work"],
    )
    assert "step     10/10" in resumed.stdout
    losses = logged_metric(job["work"], "killed-at-6")
    assert sorted(losses) == list(range(1, 11))
    assert list(losses.values()) == two_rank_losses  # exactly: same data order, same arithmetic


def test_sigterm_saves_and_exits_zero_then_resume_continues_exactly(job, two_rank_losses):
    """SIGTERM to `pretrain train` (what Slurm sends before a time limit): the step finishes, a checkpoint is
    saved, the command exits 0; the same command continues to the losses of the uninterrupted run."""
    process = start_layout_run(job, "preempted", "checkpoint.every_steps=1", "checkpoint.keep_last=1")
    output = read_until(process, "step      2/10")
    process.send_signal(signal.SIGTERM)
    output += process.stdout.read()
    assert process.wait() == 0, output[-3000:]
    stopped = re.search(r"SIGTERM: stopped after step (\d+), saved (\S+); run the same command to continue", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert 2 <= step < 10
    run_dir = job["work"] / "runs" / "preempted"
    assert latest_tag(run_dir) == f"step_{step:08d}"
    assert "stopped before the end; run the same command again to continue" in output
    client, run = MlflowClient(f"sqlite:///{job['work'] / 'mlflow.db'}"), None
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'preempted'")
    assert run.info.status == "KILLED"
    pretrain(
        "train",
        *job["config"],
        "tracking.run_name=preempted",
        *LAYOUT_RUN,
        *TWO_RANKS_ZERO1,
        cwd=job["work"],
    )  # the same command again: a run folder with a checkpoint is continued, as a requeued job needs
    losses = logged_metric(job["work"], "preempted")
    assert list(losses.values()) == two_rank_losses
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
