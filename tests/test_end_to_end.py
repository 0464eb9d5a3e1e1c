"""The whole job through the real CLI: Ray data build on the embedded corpus -> 2-process
DeepSpeed training (gloo, ZeRO-1) -> MLflow run read back -> export -> generation -> resume.
"""

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient

from pretrain.config import load_config
from pretrain.layout import CHECKPOINTS_DIR, MARKER_NAME
from pretrain.train.optim import lr_multiplier
from pretrain.weights.checkpoint import checkpoint_dir, latest_tag
from pretrain.weights.checkpoint_files import load_torch_file
from pretrain.weights.model_folder import load_model_folder
from tests.helpers import (
    LAYOUT_RUN,
    TWO_RANKS_ZERO1,
    logged_metric,
    pretrain,
    read_until,
    tiny_job_config,
    train_losses,
    validation_batches,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_data):
    """Train and export, the demo's stages on the tiny config, in a fresh folder, from the session's shards."""
    work = tmp_path_factory.mktemp("job")
    config = tiny_job_config(work, tiny_data)
    outputs = {
        "config": config,
        "work": work,
        "data_dir": tiny_data,
        "data": (tiny_data.parent / "build.out").read_text(),
        "train": pretrain("train", *config, "train.eval_prompts=[Return the, def]", cwd=work).stdout,
        "export": pretrain("export", *config, cwd=work).stdout,
    }
    return outputs


def mlflow_run(job):
    client = MlflowClient(f"sqlite:///{job['work'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'tiny'")
    assert len(runs) == 1
    return client, runs[0]


def test_data_stage_reports_its_outputs(job):
    assert re.search(r"stdlib: [\d,]+ documents in = [\d,]+ written \+ [\d,]+ duplicates", job["data"])
    assert f"shards, tokenizer, manifest and rejects: {job['data_dir']}" in job["data"]
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
    assert re.search(r"step      5/30 \| loss [\d.]+ \| lr [\d.e+-]+ \| [\d,]+ tok/s \| ETA \d+", job["train"])


def test_mlflow_run_holds_params_metrics_and_artifacts(job):
    client, run = mlflow_run(job)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["parallel.zero_stage"] == "1"
    assert run.data.tags["world_size"] == "2"
    manifest = json.loads((job["data_dir"] / "manifest.json").read_text())
    assert run.data.tags["data.fingerprint"] == manifest["fingerprint"]
    assert 0 < int(run.data.tags["data.dropped_tokens"]) < 64 * manifest["totals"]["train"]["shards"]
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 6  # every 5 steps of 30
    assert losses[-1] < losses[0] - 0.5
    val = sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.step for m in val] == [0, 15, 30]
    perplexity = sorted(client.get_metric_history(run.info.run_id, "val_perplexity"), key=lambda m: m.step)
    assert [m.value for m in perplexity] == pytest.approx([math.exp(m.value) for m in val])
    assert val[-1].value < val[0].value - 0.5
    assert client.get_metric_history(run.info.run_id, "tokens_per_s")[0].value > 0
    assert client.get_metric_history(run.info.run_id, "mfu") == []  # a CPU has no known peak: no MFU, not a wrong one
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "deepspeed_config.json", "manifest.json", "tokenizer.json", "summary.json"} <= artifacts
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    # train.eval_prompts continued at every validation (steps 0, 15 and 30), the sample prompt at the end
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
    assert len(generated.stdout.strip()) > len("Return the")
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
    """The validation loss of a run's exported model, on the batches the trainer evaluated."""
    model, _ = load_model_folder(run_dir / "export")
    with torch.no_grad():
        losses = [model(*map(torch.from_numpy, batch))[1] for batch in validation_batches(run_dir, data_dir)]
    return torch.stack(losses).mean().item()


def test_exported_model_reproduces_the_validation_loss(job):
    """The export is exact: the folder's model gives the loss the trainer measured on the same batches."""
    run_dir = job["work"] / "runs" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert exported_validation_loss(run_dir, job["data_dir"]) == pytest.approx(summary["val_loss"], abs=1e-4)


def test_single_process_without_zero_with_accumulation_and_document_masking(job):
    single = [
        *job["config"],
        "tracking.run_name=single",
        "launch.nproc_per_node=1",
        "parallel.zero_stage=0",
        "train.max_steps=4",
        "train.warmup_steps=2",
        "train.global_batch_size=16",  # 2 accumulation steps of 8
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=2",
        "train.document_masking=true",
    ]
    trained = pretrain("train", *single, cwd=job["work"])
    assert "step      4/4" in trained.stdout
    run_dir = job["work"] / "runs" / "single"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 16 * 64
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
    changed = ["train.max_steps=40", "train.lr=1e-4", "train.min_lr=1e-5"]
    resumed = pretrain("train", *job["config"], "--resume", *changed, cwd=job["work"])
    assert (
        "continuing at step 30 with changed settings: " in resumed.stdout
        and "train.lr 0.002 -> 0.0001" in resumed.stdout
    )
    client, after = mlflow_run(job)
    assert after.info.run_id == before.info.run_id
    steps = [m.step for m in client.get_metric_history(after.info.run_id, "loss")]
    assert max(steps) == 40 and steps.count(30) == 1
    schedule = lr_multiplier(load_config(job["config"][1], [*job["config"][2:], *changed]).train)
    lrs = {m.step: m.value for m in client.get_metric_history(after.info.run_id, "lr")}
    assert [lrs[35], lrs[40]] == pytest.approx([1e-4 * schedule(35), 1e-4 * schedule(40)])
    assert lrs[40] == pytest.approx(1e-5)
    run_dir = job["work"] / "runs" / "tiny"
    assert load_config(run_dir / "config.yaml").train.lr == 1e-4
    assert load_config(run_dir / "config_history" / "config.until_step_00000030.yaml").train.lr == 2e-3
    assert "train.lr 0.002 -> 0.0001" in after.data.tags["config.changed_at_step_30"]


def train_layout(job, name: str, *layout: str) -> list[float]:
    return train_losses(job["work"], job["config"], name, *layout)


@pytest.fixture(scope="module")
def single_process_losses(job):
    return train_layout(job, "layout-single", "launch.nproc_per_node=1", "parallel.zero_stage=0")


def test_two_data_parallel_ranks_give_the_single_process_losses(single_process_losses, two_rank_losses):
    assert len(two_rank_losses) == len(single_process_losses) == 10
    assert two_rank_losses == pytest.approx(single_process_losses, rel=1e-5)
    assert two_rank_losses[-1] < two_rank_losses[0]  # they trained, not just agreed at initialization


@pytest.mark.parametrize(
    "layout",
    [
        # The single process computes the loss in one chunk (train.loss_chunk_tokens=4096 > 8 x 64 tokens);
        # these layouts from the whole logits, and in uneven chunks of 100 tokens under ZeRO-3's gathered head.
        ("launch.nproc_per_node=2", "parallel.zero_stage=2", "train.loss_chunk_tokens=0"),
        ("launch.nproc_per_node=2", "parallel.zero_stage=3", "train.loss_chunk_tokens=100"),
        ("launch.nproc_per_node=2", "parallel.zero_stage=2", "parallel.offload_optimizer=true"),
        # 2 accumulation steps of 4 per rank, each block's activations recomputed in backward
        (
            "launch.nproc_per_node=2",
            "parallel.zero_stage=1",
            "train.micro_batch_size=4",
            "train.activation_checkpointing=true",
        ),
        ("launch.nproc_per_node=2", "parallel.zero_stage=1", "parallel.tensor_parallel_size=2"),
        # 2 data-parallel x 2 tensor-parallel ranks
        ("launch.nproc_per_node=4", "parallel.zero_stage=1", "parallel.tensor_parallel_size=2"),
        (
            "launch.nproc_per_node=4",
            "parallel.zero_stage=3",
            "parallel.tensor_parallel_size=2",
            "train.loss_chunk_tokens=100",
        ),
        # DeepSpeed's launcher instead of torchrun, and the --nproc shorthand
        ("--nproc=2", "launch.launcher=deepspeed"),
    ],
    ids=[
        "zero2",
        "zero3",
        "zero2-offload",
        "zero1-micro4-accum2-recompute",
        "tp2",
        "dp2-tp2-zero1",
        "dp2-tp2-zero3",
        "deepspeed-launcher",
    ],
)
def test_parallel_layouts_give_the_single_process_losses(job, single_process_losses, layout):
    """The same seed, data and global batch: the same loss at every step, whatever the layout (fp32)."""
    name = "layout-" + "-".join(part.split("=")[1] for part in layout)
    losses = train_layout(job, name, *layout)
    assert len(losses) == len(single_process_losses) == 10
    assert losses == pytest.approx(single_process_losses, rel=1e-5)


def test_a_compiled_model_trains_to_the_single_process_losses(job, single_process_losses):
    """train.compile=true: DeepSpeed's engine.compile() (torch.compile with inductor, here on the CPU), the loss
    in chunks included; generation with eval prompts and the final sample run eagerly on the same model."""
    layout = ("launch.nproc_per_node=1", "parallel.zero_stage=0", "train.compile=true", "train.eval_prompts=[The]")
    losses = train_layout(job, "compiled", *layout)
    # Compiled kernels add in another order: equal to fp32 rounding, and not bit for bit (they did run).
    assert losses == pytest.approx(single_process_losses, rel=1e-4)
    assert losses != single_process_losses
    summary = json.loads((job["work"] / "runs" / "compiled" / "summary.json").read_text())
    assert summary["sample"].startswith("Return the")  # train.sample_prompt (configs/demo.yaml), continued


def test_bf16_autocast_trains_fp32_weights_with_bf16_matrix_products(job, two_rank_losses):
    """train.precision=bf16-autocast: the checkpoint's weights stay fp32, and the losses are the fp32 run's
    to bf16's accuracy, not bit for bit: the Linear layers did run in bf16."""
    losses = train_layout(job, "autocast", *TWO_RANKS_ZERO1, "train.precision=bf16-autocast")
    assert losses == pytest.approx(two_rank_losses, rel=2e-2)
    assert losses != pytest.approx(two_rank_losses, rel=1e-5)
    run_dir = job["work"] / "runs" / "autocast"
    assert json.loads((run_dir / "deepspeed_config.json").read_text())["torch_autocast"]["enabled"]
    states = checkpoint_dir(run_dir) / latest_tag(run_dir) / "mp_rank_00_model_states.pt"
    module = load_torch_file(states)["module"]
    assert {tensor.dtype for tensor in module.values()} == {torch.float32}


def test_tensor_parallel_checkpoints_hold_one_shard_per_tensor_parallel_rank(job):
    """Tensor parallelism really splits the projections: each model shard holds half of every head's matrix."""
    folder = checkpoint_dir(job["work"] / "runs" / "layout-4-1-2") / "step_00000010"
    shards = [load_torch_file(folder / f"mp_rank_0{r}_model_states.pt")["module"] for r in (0, 1)]
    for name, column_parallel in [("self_attn.q_proj", True), ("mlp.up_proj", True), ("self_attn.o_proj", False)]:
        weights = [shard[f"layers.0.{name}.weight"] for shard in shards]
        full_shape = (64, 64) if "attn" in name else (256, 64)
        split = 0 if column_parallel else 1
        assert all(w.shape[split] == full_shape[split] // 2 for w in weights), (name, weights[0].shape)
        assert not torch.equal(weights[0], weights[1])
    assert torch.equal(shards[0]["embed_tokens.weight"], shards[1]["embed_tokens.weight"])  # kept whole


# A model big enough (25 M parameters, 300 MB of checkpoint) that a save takes long enough to be killed inside.
SLOW_SAVE = ["model.n_layer=8", "model.n_embd=512", "model.n_head=8"]


def kill_during_a_save(job, run_name: str) -> list[str]:
    """Start a 2-rank run that saves every step; kill -9 all its processes while a checkpoint is half written.

    Returns the checkpoint folders that were incomplete at the kill (empty if the kill came too late).
    """
    command = [sys.executable, "-m", "pretrain.cli", "train", *job["config"], f"tracking.run_name={run_name}"]
    command += [*SLOW_SAVE, "train.max_steps=40", "train.warmup_steps=2", "checkpoint.every_steps=1"]
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
    pretrain(
        "train",
        *job["config"],
        f"tracking.run_name={run_name}",
        "--resume",
        *SLOW_SAVE,
        "train.max_steps=40",
        "train.warmup_steps=2",
        "checkpoint.every_steps=0",
        "checkpoint.keep_last=2",
        cwd=job["work"],
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 40
    folders = sorted(p.name for p in checkpoint_dir(run_dir).glob("step_*"))
    assert folders[-1] == "step_00000040" and latest_tag(run_dir) == "step_00000040"
    assert not set(incomplete) & set(folders)  # what the killed save left is gone


def test_killing_the_train_command_takes_its_ranks_with_it(job):
    """kill -9 of `pretrain train` alone: torchrun and both ranks (each in a session of its own) die too."""
    command = [sys.executable, "-m", "pretrain.cli", "train", *job["config"], "tracking.run_name=orphans"]
    process = subprocess.Popen(
        [*command, "train.max_steps=100000", "train.eval_interval=100000"],
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
        "train.warmup_steps=2",
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
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [2, 4, 6, 8, 10]
    assert {"config.yaml", "samples", "plots"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
