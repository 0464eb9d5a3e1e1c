"""The whole job through the real CLI: Ray data build on the embedded corpus -> 2-process
DeepSpeed training (gloo, ZeRO-1) -> MLflow run read back -> export -> generation -> resume.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def pretrain(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "pretrain.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pretrain {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Build, train, export: the demo's stages on the tiny config, in a fresh folder."""
    work = tmp_path_factory.mktemp("job")
    config = [
        "--config", str(ROOT / "configs" / "tiny.yaml"),
        f"data.output_dir={work / 'data'}",
        f"checkpoint.root={work / 'runs'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
    ]
    outputs = {
        "config": config,
        "work": work,
        "data": pretrain("data", "build", *config, cwd=work).stdout,
        "train": pretrain("train", *config, cwd=work).stdout,
        "export": pretrain("export", *config, cwd=work).stdout,
    }
    return outputs


def mlflow_run(job):
    client = MlflowClient(f"sqlite:///{job['work'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_data_stage_reports_its_outputs(job):
    assert "after deduplication" in job["data"]
    assert f"shards, tokenizer and manifest: {job['work'] / 'data'}" in job["data"]
    manifest = json.loads((job["work"] / "data" / "manifest.json").read_text())
    assert manifest["totals"]["train"]["tokens"] > 100_000
    assert manifest["config"]["model"]["n_layer"] == 2  # the resolved config travels with the dataset


def test_training_loss_falls_and_outputs_are_reported(job):
    summary = json.loads((job["work"] / "runs" / "tiny" / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["val_loss"] < 5.5  # ln(512) = 6.24 at the start
    assert "final train loss" in job["train"]
    assert f"run folder:  {job['work'] / 'runs' / 'tiny'}" in job["train"]
    assert "step     30/30" in job["train"]


def test_mlflow_run_holds_params_metrics_and_artifacts(job):
    client, run = mlflow_run(job)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["parallel.zero_stage"] == "1"
    assert run.data.tags["world_size"] == "2"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 6  # every 5 steps of 30
    assert losses[-1] < losses[0] - 0.5
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in sorted(val, key=lambda m: m.step)] == [15, 30]
    assert client.get_metric_history(run.info.run_id, "tokens_per_s")[0].value > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "deepspeed_config.json", "manifest.json", "tokenizer.json", "summary.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/final.txt"]


def test_export_folder_and_generation(job):
    folder = job["work"] / "runs" / "tiny" / "export"
    assert f"exported model folder: {folder}" in job["export"]
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert json.loads((folder / "config.json").read_text())["n_embd"] == 64
    generated = pretrain("generate", *job["config"], "--prompt", "Return the", "--temperature", "0", cwd=job["work"])
    assert generated.stdout.startswith("Return the")
    assert len(generated.stdout.strip()) > len("Return the")


def test_a_finished_run_is_not_overwritten(job):
    result = pretrain("train", *job["config"], cwd=job["work"], check=False)
    assert result.returncode == 1
    assert "already holds checkpoints; pass --resume" in result.stderr


def test_resume_continues_the_same_mlflow_run(job):
    _, before = mlflow_run(job)
    pretrain("train", *job["config"], "--resume", "train.max_steps=40", cwd=job["work"])
    client, after = mlflow_run(job)
    assert after.info.run_id == before.info.run_id
    steps = [m.step for m in client.get_metric_history(after.info.run_id, "loss")]
    assert max(steps) == 40 and steps.count(30) == 1
