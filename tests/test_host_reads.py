"""The training step reads nothing back from the device: on a GPU each such read makes the host wait.

The run is the real CLI in a one-rank process (ZeRO 1, as on GPUs), with
torch's ways of reading a tensor's values on the host (`item`, `tolist`,
`float`, `bool`, `cpu`, `numpy`) wrapped to record each call made from the
project's own code (`model/`, `pretrain/`, `data_pipeline/`), and whether
it came during `pretrain.train.loop.train_step`. DeepSpeed's own reads are not
counted: they are DeepSpeed's.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, free_port, tiny_job_config

pytestmark = pytest.mark.slow

RECORDING_RANK = """
import collections, json, sys
import torch
import pretrain.train.loop
from pretrain.cli import main

ROOT, out = sys.argv[1], sys.argv[2]
ours = tuple(f"{ROOT}/{folder}/" for folder in ("model", "pretrain", "data_pipeline"))
reads = collections.Counter()
in_step = [False]

def recording(name, method):
    def read(self, *args, **kwargs):
        caller = sys._getframe(1).f_code
        if caller.co_filename.startswith(ours):
            where = "step" if in_step[0] else "outside"
            reads[f"{where} {caller.co_filename.removeprefix(ROOT)}:{caller.co_name} {name}"] += 1
        return method(self, *args, **kwargs)
    return read

for name in ("item", "tolist", "__float__", "__bool__", "cpu", "numpy"):
    setattr(torch.Tensor, name, recording(name, getattr(torch.Tensor, name)))

train_step = pretrain.train.loop.train_step

def recorded_step(*args):
    in_step[0] = True
    try:
        return train_step(*args)
    finally:
        in_step[0] = False

pretrain.train.loop.train_step = recorded_step
code = main(sys.argv[3:])
with open(out, "w") as file:
    json.dump(reads, file)
sys.exit(code)
"""


def test_no_host_reads_inside_a_training_step_and_the_loss_read_at_logs_only(tmp_path, tiny_data):
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    args = ["train", *tiny_job_config(tmp_path, tiny_data), "launch.nproc_per_node=1", "parallel.zero_stage=1"]
    # 2 micro-batches a step; the loss is logged at steps 3 and 6, and validated at 6 only.
    args += ["train.global_batch_size=16", "train.max_steps=6", "train.log_interval=3", "eval.interval=100"]
    out = tmp_path / "reads.json"
    result = subprocess.run(
        [sys.executable, "-c", RECORDING_RANK, str(ROOT), str(out), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reads = json.loads(out.read_text())
    assert not [read for read in reads if read.startswith("step ")], reads
    between_steps = {read: count for read, count in reads.items() if "/model/generation.py:" not in read}
    assert between_steps == {
        # The mean loss over ranks: at the logs of steps 3 and 6.
        "outside /pretrain/train/step.py:mean_over_ranks cpu": 2,
        "outside /pretrain/train/step.py:mean_over_ranks item": 2,  # of the host copy
        # The validations of steps 0 and 6: the sums of all their batches, read once each, then the host copy.
        "outside /pretrain/evaluation/validation.py:validation_loss cpu": 2,
        "outside /pretrain/evaluation/validation.py:validation_loss tolist": 2,
        "outside /pretrain/train/loop.py:step_metrics __float__": 2,  # the gradient norm, at the logs
        # Every step, and twice while the job starts: whether a rank was asked to stop. The flag is a host tensor
        # on a gloo group: no device read.
        "outside /pretrain/train/preemption.py:requested item": 6 + 2,
    }
