"""Non-finite losses, injected into a real run: skipped and counted, and a run that keeps making them stops.

The run is the real CLI in a one-rank process whose model is poisoned from
outside (`GPT.forward` wrapped to turn chosen training losses into NaN), so
the code under test is exactly what `pretrain train` runs.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

from pretrain.weights.checkpoint_files import load_torch_file
from pretrain.weights.checkpoint_folder import checkpoint_dir
from tests.helpers import ROOT, free_port, logged_metric, tiny_job_config

pytestmark = pytest.mark.slow

# Runs the CLI as rank 0 of a one-process job, with the training losses of the
# forward calls named in argv[1] ("6,7": those calls; "6+": from call 6 on) made NaN.
POISONED_RANK = """
import sys
from model.gpt import GPT
from pretrain.cli import main

spec, calls, forward = sys.argv[1], [0], GPT.forward
onward = spec.endswith("+")
chosen = {int(c) for c in spec.rstrip("+").split(",")}

def poisoned(self, *args, **kwargs):
    logits, loss = forward(self, *args, **kwargs)
    if self.training and loss is not None:
        call = calls[0]
        calls[0] += 1
        if call in chosen or (onward and call >= min(chosen)):
            loss = loss * float("nan")
    return logits, loss

GPT.forward = poisoned
sys.exit(main(sys.argv[2:]))
"""


def run_poisoned(
    work, tiny_data, spec: str, *overrides: str, faults: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", **(faults or {})}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    # 2 micro-batches per step (16 = 8 x 2): forward calls 6 and 7 are step 4's.
    args = ["train", *tiny_job_config(work, tiny_data), "launch.nproc_per_node=1", "train.global_batch_size=16"]
    args += ["lr_schedule.warmup_steps=2", "train.log_interval=1", "eval.interval=100", *overrides]
    return subprocess.run(
        [sys.executable, "-c", POISONED_RANK, spec, *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(
    "layout",
    [
        ("parallel.zero_stage=0",),
        ("parallel.zero_stage=0", "train.precision=bf16-autocast"),
        ("parallel.zero_stage=1",),
    ],
    ids=["own-adamw", "own-adamw-autocast", "deepspeed-zero1"],
)
def test_a_nan_loss_skips_its_step_and_training_goes_on(tmp_path, tiny_data, layout):
    name = "nan-once"
    result = run_poisoned(tmp_path, tiny_data, "6,7", f"tracking.run_name={name}", "train.max_steps=8", *layout)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = logged_metric(tmp_path, name)
    assert math.isnan(losses[4])
    assert all(math.isfinite(losses[step]) for step in (1, 2, 3, 5, 6, 7, 8))
    assert losses[8] < losses[1]  # the weights were not poisoned: training went on
    assert logged_metric(tmp_path, name, "skipped_steps") == {s: (0 if s < 4 else 1) for s in range(1, 9)}
    assert "| skipped 1" in result.stdout


def test_consecutive_nan_losses_stop_the_run_with_the_weights_from_before(tmp_path, tiny_data):
    result = run_poisoned(
        tmp_path,
        tiny_data,
        "6+",
        "tracking.run_name=nan-forever",
        "parallel.zero_stage=1",
        "train.max_steps=20",
        "train.max_nonfinite_steps=3",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=10",
    )
    assert result.returncode == 1
    assert "not finite for 3 consecutive steps (4-6; train.max_nonfinite_steps = 3)" in result.stderr
    assert "holds the weights from before step 4" in result.stderr
    folder = checkpoint_dir(tmp_path / "runs" / "nan-forever")
    assert sorted(p.name for p in folder.glob("step_*")) == [f"step_0000000{s}" for s in range(1, 7)]
    before, saved = (
        load_torch_file(folder / tag / "mp_rank_00_model_states.pt")["module"]
        for tag in ("step_00000003", "step_00000006")
    )
    assert all(torch.equal(before[key], saved[key]) for key in before)
    assert all(torch.isfinite(value).all() for value in saved.values())


def test_a_loss_spike_is_not_applied_with_spike_action_skip(tmp_path, tiny_data):
    """train.spike.action=skip, without ZeRO (our AdamW refuses the update): step 7's batch makes the loss 100x
    (pretrain/train/faults.py); the step is named, refused like a non-finite one, and training goes on."""
    result = run_poisoned(
        tmp_path,
        tiny_data,
        "1000",  # no NaN
        "tracking.run_name=spike",
        "parallel.zero_stage=0",
        "train.max_steps=8",
        "train.spike.action=skip",
        faults={"PRETRAIN_FAULT_SPIKE_AT_SAMPLE": str(6 * 16)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loss spike at step 7: " in result.stdout
    assert "x the recent median; the step was not applied (train.spike.action=skip)" in result.stdout
    losses = logged_metric(tmp_path, "spike")
    assert losses[7] > 50 * losses[6]  # the spike, as logged
    assert losses[8] < losses[6]  # the weights did not take it: training went on
    assert logged_metric(tmp_path, "spike", "skipped_steps") == {s: (0 if s < 7 else 1) for s in range(1, 9)}
