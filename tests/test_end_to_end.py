"""The whole job through the real CLI: Ray data build on the embedded corpus -> 2-process
DeepSpeed training (gloo, ZeRO-1) -> MLflow run read back -> export -> generation -> resume.
Every parallel layout against it: tests/test_layouts.py; interrupted runs: tests/test_interruptions.py.
"""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from data_pipeline.loader import TokenSequences
from pretrain.cli import main
from pretrain.config import load_config
from pretrain.layout import CHECKPOINTS_DIR
from pretrain.train.optim import lr_multiplier
from pretrain.weights.model_folder import load_model_folder
from tests.helpers import (
    logged_metric,
    pretrain,
    validation_batches,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(job):
    """The tiny job's folder (conftest.py), trained and exported: the demo's stages on the tiny config."""
    config, work, data_dir = job["config"], job["work"], job["data_dir"]
    return job | {
        "data": (data_dir.parent / "build.out").read_text(),
        "data_stderr": (data_dir.parent / "build.err").read_text(),
        "train": pretrain("train", *config, "eval.prompts=[Return the, def]", cwd=work).stdout,
        "export": pretrain("export", *config, cwd=work).stdout,
    }


def mlflow_run(job):
    client = MlflowClient(f"sqlite:///{job['work'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'tiny'")
    assert len(runs) == 1
    return client, runs[0]


def test_data_stage_reports_its_outputs(job):
    assert re.search(r"stdlib: [\d,]+ documents in = [\d,]+ written \+ [\d,]+ duplicates", job["data"])
    assert f"shards, tokenizer, manifest and rejects: {job['data_dir']}" in job["data"]
    passes = [line for line in job["data"].splitlines() if line.startswith("pass ")]
    assert [line.split(":")[0] for line in passes] == ["pass 1/4", "pass 2/4", "pass 3/4", "pass 4/4"]
    # Ray's own INFO lines, and deprecation warnings, stay out of the build's output (--verbose shows Ray's).
    assert " INFO " not in job["data_stderr"] and "Warning" not in job["data_stderr"], job["data_stderr"]
    manifest = json.loads((job["data_dir"] / "manifest.json").read_text())
    assert manifest["totals"]["train"]["tokens"] > 100_000
    assert manifest["config"]["model"]["n_layer"] == 2  # the resolved config travels with the dataset


def test_training_loss_falls_and_outputs_are_reported(job):
    summary = json.loads((job["work"] / "runs" / "tiny" / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["val_loss"] < 5.5  # ln(512) = 6.24 at the start
    assert "final train loss" in job["train"]
    assert f"run folder:  {job['work'] / 'runs' / 'tiny'}" in job["train"]
    assert "step     30/30" in job["train"]
    line = r"step      5/30 \| loss [\d.]+ \| lr [\d.e+-]+ \| [\d,]+ tok/s \| [\d,]+ ms/step \| mem [\d.]+ GiB \| elapsed \d+"
    assert re.search(line + r"\w* \| ETA \d+", job["train"]), job["train"][-2000:]


def test_mlflow_run_holds_params_metrics_and_artifacts(job):
    client, run = mlflow_run(job)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["parallel.zero_stage"] == "1"
    assert run.data.tags["world_size"] == "2"
    manifest = json.loads((job["data_dir"] / "manifest.json").read_text())
    assert run.data.tags["data.fingerprint"] == manifest["fingerprint"]
    assert 0 < int(run.data.tags["data.dropped_tokens"]) < 64 * manifest["totals"]["train"]["shards"]
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert len(losses) == 6  # every 5 steps of 30
    assert losses[-1] < losses[0] - 0.5
    val = sorted(client.get_metric_history(run.info.run_id, "eval/loss"), key=lambda m: m.step)
    assert [m.step for m in val] == [0, 15, 30]
    perplexity = sorted(client.get_metric_history(run.info.run_id, "eval/perplexity"), key=lambda m: m.step)
    assert [m.value for m in perplexity] == pytest.approx([math.exp(m.value) for m in val])
    assert val[-1].value < val[0].value - 0.5
    assert client.get_metric_history(run.info.run_id, "perf/tokens_per_s")[0].value > 0
    assert (
        client.get_metric_history(run.info.run_id, "perf/mfu") == []
    )  # a CPU has no known peak: no MFU, not a wrong one
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "deepspeed_config.json", "manifest.json", "tokenizer.json", "summary.json"} <= artifacts
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    # eval.prompts continued at every validation (steps 0, 15 and 30), the sample prompt at the end
    assert samples == ["samples/final.txt"] + [f"samples/step_000000{s}.txt" for s in ("00", "15", "30")]
    at_the_end = Path(client.download_artifacts(run.info.run_id, "samples/step_00000030.txt", str(job["work"])))
    assert at_the_end.read_text().startswith("Return the") and "\n\ndef" in at_the_end.read_text()


def test_export_folder_and_generation(job):
    folder = job["work"] / "runs" / "tiny" / "export"
    assert f"exported model folder: {folder}" in job["export"]
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert json.loads((folder / "config.json").read_text())["n_embd"] == 64
    generated = pretrain("generate", *job["config"], "--prompt", "Return the", "--temperature", "0", cwd=job["work"])
    assert generated.stdout.startswith("Return the")
    assert len(generated.stdout.rstrip("\n")) > len("Return the")  # continued (30 steps' greedy text: spaces)
    # Straight from the run folder's checkpoint, with a batch of prompts of different lengths:
    # the same greedy continuation for the same prompt.
    run_dir = job["work"] / "runs" / "tiny"
    batch = pretrain(
        "generate",
        *job["config"],
        "--checkpoint",
        str(run_dir),
        "--prompt",
        "Return the",
        "--prompt",
        "def",
        "--temperature",
        "0",
        cwd=job["work"],
    )
    first = generated.stdout[:-1]  # print's newline
    assert batch.stdout.startswith(first + "\n\n")
    assert batch.stdout[len(first) + 2 :].startswith("def")


def exported_validation_loss(run_dir: Path, data_dir: Path) -> float:
    """The validation loss of a run's exported model, on the batches the trainer evaluated: the mean over every
    target that counts."""
    model, _ = load_model_folder(run_dir / "export")
    total = counted = 0
    with torch.no_grad():
        for batch in validation_batches(run_dir, data_dir):
            count = int((batch[1] != -100).sum())
            total += model(*map(torch.from_numpy, batch))[1].item() * count
            counted += count
    return total / counted


def test_exported_model_reproduces_the_validation_loss(job):
    """The export is exact: the folder's model gives the loss the trainer measured on the same batches."""
    run_dir = job["work"] / "runs" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert exported_validation_loss(run_dir, job["data_dir"]) == pytest.approx(summary["val_loss"], abs=1e-4)


def test_single_process_without_zero_with_accumulation_and_document_masking(job, tiny_tasks, tmp_path):
    """Also evaluation: every validation sequence (eval.batches=all) and a task scored in the loop, the counts
    said in the console, summary and MLflow, and `pretrain eval` on the checkpoint giving the loop's numbers."""
    single = [
        *job["config"],
        "tracking.run_name=single",
        "launch.nproc_per_node=1",
        "parallel.zero_stage=0",
        "train.max_steps=4",
        "lr_schedule.warmup_steps=2",
        "train.global_batch_size=16",  # 2 accumulation steps of 8
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=2",
        "train.document_masking=true",
        "eval.batches=all",
        f"eval.tasks=[{tiny_tasks / 'small.jsonl'}]",
    ]
    trained = pretrain("train", *single, cwd=job["work"])
    assert "step      4/4" in trained.stdout
    run_dir = job["work"] / "runs" / "single"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 16 * 64
    sequences = len(TokenSequences(job["data_dir"], "val", 64))
    assert (summary["val_sequences"], summary["val_tokens"]) == (sequences, sequences * 64)
    assert f"{sequences:,} sequences, {sequences * 64:,} tokens) | small/acc " in trained.stdout
    assert logged_metric(job["work"], "single", "eval/sequences") == {0: sequences, 4: sequences}
    in_loop = logged_metric(job["work"], "single", "eval/small/acc")[4]
    # `pretrain eval` in one process, on the run's own tasks and whole validation split (masked as it trained).
    assert main(["eval", *single, "--out", str(tmp_path / "eval.json")]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["step"] == 4 and results["tasks"]["small"]["acc"] == in_loop
    assert results["validation"]["val_loss"] == pytest.approx(summary["val_loss"], abs=1e-5)
    assert results["validation"]["val_sequences"] == sequences
    kept = sorted(p.name for p in (run_dir / CHECKPOINTS_DIR).iterdir() if p.is_dir())
    assert kept == ["step_00000003", "step_00000004"]
    refused = pretrain("export", *single, cwd=job["work"], check=False)
    assert refused.returncode == 1
    assert "train.document_masking = true: the model was trained with attention kept inside each" in refused.stderr
    assert "export it with --format torch" in refused.stderr
    pretrain("export", *single, "--format", "torch", cwd=job["work"])
    # Trained with document masking: the trainer's validation loss is the masked one.
    masked = exported_validation_loss(run_dir, job["data_dir"])
    assert masked == pytest.approx(summary["val_loss"], abs=1e-4)


def test_a_finished_run_is_not_overwritten(job):
    result = pretrain("train", *job["config"], cwd=job["work"], check=False)
    assert result.returncode == 1
    assert "this run already finished (checkpoint step_00000030, train.max_steps = 30)" in result.stderr


def test_resume_continues_the_same_mlflow_run_with_the_changed_learning_rate(job):
    """What may change on resume takes effect: the schedule is rebuilt from the new rates at the step reached;
    config.yaml is the new config, the old one kept beside it, and the MLflow run records the change."""
    _, before = mlflow_run(job)
    changed = ["train.max_steps=40", "optimizer.lr=1e-4", "lr_schedule.min_lr=1e-5"]
    resumed = pretrain("train", *job["config"], "--resume", *changed, cwd=job["work"])
    assert (
        "continuing at step 30 with changed settings: " in resumed.stdout
        and "optimizer.lr 0.002 -> 0.0001" in resumed.stdout
    )
    client, after = mlflow_run(job)
    assert after.info.run_id == before.info.run_id
    steps = [m.step for m in client.get_metric_history(after.info.run_id, "train/loss")]
    assert max(steps) == 40 and steps.count(30) == 1
    schedule = lr_multiplier(load_config(job["config"][1], [*job["config"][2:], *changed]))
    lrs = {m.step: m.value for m in client.get_metric_history(after.info.run_id, "train/lr")}
    assert [lrs[35], lrs[40]] == pytest.approx([1e-4 * schedule(35), 1e-4 * schedule(40)])
    assert lrs[40] == pytest.approx(1e-5)
    run_dir = job["work"] / "runs" / "tiny"
    assert load_config(run_dir / "config.yaml").optimizer.lr == 1e-4
    assert load_config(run_dir / "config_history" / "config.until_step_00000030.yaml").optimizer.lr == 2e-3
    assert "optimizer.lr 0.002 -> 0.0001" in after.data.tags["config.changed_at_step_30"]


def test_training_with_the_tracking_server_down_finishes_and_runs_sync_sends_it(
    job, mlflow_server, unreachable_mlflow_uri
):
    """`pretrain train` against a server that is not there: it trains to the end at full speed, says once where
    the record went, and `pretrain runs sync` delivers every logged step to a real server afterwards."""
    trained = pretrain(
        "train",
        *job["config"],
        "tracking.run_name=offline",
        f"tracking.uri={unreachable_mlflow_uri}",
        "train.max_steps=10",
        "lr_schedule.warmup_steps=2",
        "train.log_interval=2",
        cwd=job["work"],
    )
    run_dir = job["work"] / "runs" / "offline"
    assert trained.stderr.count("cannot be reached") == 1
    assert f"pretrain runs sync {run_dir}" in trained.stdout + trained.stderr
    assert json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"] is None
    synced = pretrain("runs", "sync", str(run_dir), "--uri", mlflow_server, cwd=job["work"])
    assert "status FINISHED" in synced.stdout
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'offline'")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [2, 4, 6, 8, 10]
    assert {"config.yaml", "samples", "plots"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
