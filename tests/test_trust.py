"""Runs you can trust, tried as issue 17 tried them: a planted pickle, a damaged checkpoint, an altered shard,
settings a checkpoint fixes, a finish that was killed, secrets, two writers, listening addresses, signals at any
moment, and a full disk. Each runs the real CLI; the damage is done to copies of one small run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient

from pretrain.cli import main
from pretrain.layout import MARKER_NAME
from pretrain.tracking.metric_names import tracked_name
from pretrain.weights.checkpoint_files import describe_file, verify
from pretrain.weights.checkpoint_folder import checkpoint_dir, latest_tag
from tests.helpers import SLOW, pretrain, read_until, tiny_job_config, unavailable

pytestmark = pytest.mark.slow

# Two ranks, ZeRO 1, four steps, a checkpoint every two: step_00000002 and step_00000004.
BASE = [
    "tracking.run_name=base",
    "launch.nproc_per_node=2",
    "parallel.zero_stage=1",
    "train.max_steps=4",
    "lr_schedule.warmup_steps=1",
    "train.log_interval=1",
    "eval.interval=4",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
PLANTED_SECRET = "planted-pw-5c0ffee"


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_data):
    """The run every case damages a copy of, and its losses by step."""
    work = tmp_path_factory.mktemp("trust")
    pretrain("train", *tiny_job_config(work, tiny_data), *BASE, cwd=work)
    return {"work": work, "data": tiny_data, "losses": metric(work, "loss")}


def copy_of(base, name: str) -> tuple[Path, list[str], Path]:
    """A copy of the base run and of its MLflow store: (work folder, config arguments, run folder)."""
    work = base["work"] / name
    shutil.copytree(base["work"] / "runs", work / "runs")
    shutil.copyfile(base["work"] / "mlflow.db", work / "mlflow.db")
    return work, [*tiny_job_config(work, base["data"]), *BASE], work / "runs" / "base"


def new_folder(base, name: str) -> Path:
    work = base["work"] / name
    work.mkdir()
    return work


def mlflow_run(work: Path):
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'base'")
    return client, run


def metric(work: Path, key: str) -> dict[int, float]:
    client, run = mlflow_run(work)
    history = sorted(client.get_metric_history(run.info.run_id, tracked_name(key)), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def folder_of(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}"


class RunsACommand:
    """Pickled, a call of os.system: loading the pickle would run the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def plant_code(path: Path, sentinel: Path, rewrite_marker: bool = True) -> None:
    """Replace a checkpoint file with a pickle that runs a shell command when loaded."""
    planted = RunsACommand(f"touch {sentinel}")
    torch.save({"module": planted, "optimizer_state_dict": planted}, path)
    if rewrite_marker:  # whoever plants it can rewrite the checksums too
        marker = json.loads((path.parent / MARKER_NAME).read_text())
        marker["files"][path.name] = describe_file(path)
        (path.parent / MARKER_NAME).write_text(json.dumps(marker))


def test_a_pickle_that_runs_code_is_refused_by_every_command_that_reads_checkpoints(base, tmp_path, capsys):
    """Planted in each file of the checkpoint in turn, its checksum rewritten: export, generate and attention
    refuse it, naming it; so does a resume; and the planted command never runs."""
    work, config, run_dir = copy_of(base, "pickle")
    sentinel = tmp_path / "the-code-ran"
    marker = folder_of(run_dir, 4) / MARKER_NAME
    for planted in sorted(folder_of(run_dir, 4).glob("*.pt")):
        original, checksums = planted.read_bytes(), marker.read_text()
        plant_code(planted, sentinel)
        refused = f"{planted}: refused: loading it would run code (it calls posix.system)"
        for command in (
            ["export", *config],
            ["generate", "--checkpoint", str(run_dir), "--prompt", "def"],
            ["attention", "--checkpoint", str(run_dir), "--text", "def f", "--out", str(tmp_path / "maps")],
        ):
            assert main(command) == 1, command
            assert refused in capsys.readouterr().err, command
        planted.write_bytes(original)
        marker.write_text(checksums)
    optimizer = folder_of(run_dir, 4) / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    plant_code(optimizer, sentinel)
    resumed = pretrain("train", *config, "train.max_steps=6", cwd=work, check=False)
    assert resumed.returncode == 1
    assert f"{optimizer}: refused: loading it would run code" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert not sentinel.exists()


def test_a_damaged_checkpoint_is_named_moved_aside_and_the_previous_one_used(base, capsys):
    work, config, run_dir = copy_of(base, "damaged")
    damaged = folder_of(run_dir, 4) / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(damaged.read_bytes())
    data[-4096:-3840] = bytes(b ^ 0xA5 for b in data[-4096:-3840])  # 256 bytes of Adam's state
    damaged.write_bytes(bytes(data))
    assert main(["export", *config, "--tag", "step_00000004"]) == 1
    assert f"{damaged}: its checksum differs from the marker's" in capsys.readouterr().err
    assert main(["export", *config]) == 0
    assert "checkpoint step_00000004 is damaged, so the one before is used" in capsys.readouterr().err
    assert json.loads((run_dir / "export" / "export_info.json").read_text())["checkpoint_tag"] == "step_00000002"
    (run_dir / "summary.json").unlink()  # the same command again: it continues from step 2, to the same end
    resumed = pretrain("train", *config, cwd=work)
    assert "checkpoint step_00000004 is damaged, so the previous one is used; it was moved to" in resumed.stdout
    assert f"{damaged}: its checksum differs" in resumed.stdout
    assert (checkpoint_dir(run_dir) / "corrupt-step_00000004").is_dir()
    losses = metric(work, "loss")
    assert [losses[3], losses[4]] == [base["losses"][3], base["losses"][4]]  # from step 2 again, exactly
    assert sorted(p.name for p in checkpoint_dir(run_dir).glob("step_*")) == ["step_00000002", "step_00000004"]
    assert verify(folder_of(run_dir, 4))["step"] == 4


def test_settings_a_checkpoint_fixes_are_refused_before_anything_starts(base, capsys):
    _, config, run_dir = copy_of(base, "fixed")
    before = (run_dir / "config.yaml").read_text()
    changed = ["train.max_steps=6", "model.n_layer=3", "--nproc=4", "train.seq_len=32", "train.micro_batch_size=4"]
    started = time.monotonic()
    # A layout change is resharded (tests/test_layouts.py), but not to ZeRO stage 0: its optimizer state is not
    # sharded in a form DeepSpeed converts.
    assert main(["train", *config, *changed, "parallel.zero_stage=0"]) == 1
    err = capsys.readouterr().err
    assert "cannot continue from this checkpoint with these settings, which it fixes:" in err
    for line in (
        "launch.nnodes x launch.nproc_per_node: 2 in the checkpoint, 4 now",
        "parallel.zero_stage: 1 in the checkpoint, 0 now",
        "model.n_layer: 2 in the checkpoint, 3 now",
        "train.seq_len: 64 in the checkpoint, 32 now",
    ):
        assert f"  {line}\n" in err
    assert "a checkpoint continues on another layout only with ZeRO (stages 1-3); set parallel.zero_stage to 1" in err
    assert "micro_batch_size" not in err  # it may change: the data order does not depend on it
    assert time.monotonic() - started < 30 and "Traceback" not in err
    assert (run_dir / "config.yaml").read_text() == before


def test_a_run_whose_finish_was_killed_is_finished_by_running_it_again(base):
    """The state a kill -9 just after the final checkpoint's marker leaves: no summary, the MLflow run RUNNING."""
    work, config, run_dir = copy_of(base, "finish")
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").unlink()
    client, run = mlflow_run(work)
    client.update_run(run.info.run_id, status="RUNNING")
    finished = pretrain("train", *config, cwd=work)
    assert "final train loss" in finished.stdout
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["steps"] == 4 and Path(again["checkpoint"]).name == Path(summary["checkpoint"]).name
    assert again["val_loss"] == pytest.approx(summary["val_loss"]) and again["sample"] == summary["sample"]
    _, run = mlflow_run(work)
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert "samples/final.txt" in artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/loss_curve.png"]
    assert sorted(p.name for p in checkpoint_dir(run_dir).glob("step_*")) == ["step_00000002", "step_00000004"]


def test_a_planted_secret_lands_in_no_file_no_job_record_and_no_mlflow_record(base):
    work = new_folder(base, "secret")
    config = [*tiny_job_config(work, base["data"]), f"launch.jobs_dir={work / 'jobs'}", "tracking.run_name=secret"]
    secret = f"launch.ray.env_vars={{MLFLOW_TRACKING_PASSWORD: {PLANTED_SECRET}, HF_TOKEN: {PLANTED_SECRET}-hf}}"
    settings = ["launch.nproc_per_node=1", "train.max_steps=2", "lr_schedule.warmup_steps=1", "eval.prompts=[def]"]
    submitted = pretrain("submit", *config, secret, *settings, "--detach", cwd=work)
    exit_file = next((work / "runs" / "secret").glob(".*.exit"), None)
    deadline = time.time() + 300
    while exit_file is None or not exit_file.is_file():
        assert time.time() < deadline, (work / "runs" / "secret" / "job.log").read_text()[-3000:]
        time.sleep(1)
        exit_file = next((work / "runs" / "secret").glob(".*.exit"), None)
    assert json.loads(exit_file.read_text())["returncode"] == 0
    printed = pretrain("config", *config, secret, cwd=work).stdout + submitted.stdout + submitted.stderr
    files = [path for path in work.rglob("*") if path.is_file()]
    assert {"mlflow.db", "config.yaml", "complete", "mp_rank_00_model_states.pt"} <= {path.name for path in files}
    assert any(path.parent.name == "jobs" for path in files)  # the job record and the job's config
    assert any("mlartifacts" in path.parts or "mlruns" in path.parts for path in files)  # the artifacts
    leaked = [str(path) for path in files if PLANTED_SECRET.encode() in path.read_bytes()]
    assert leaked == [] and PLANTED_SECRET not in printed


def listening_addresses(root: psutil.Process) -> set[str]:
    """Every address a process tree listens on."""
    addresses = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            addresses |= {c.laddr.ip for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass  # gone meanwhile
    return addresses


def start_run(
    work: Path, config: list[str], *settings: str, session: bool = False, env: dict | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pretrain.cli", "train", *config, *settings],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=session,  # as a terminal's foreground job: Ctrl-C reaches its process group
    )


LONG_RUN = ["train.max_steps=100000", "lr_schedule.warmup_steps=1", "train.log_interval=1", "eval.interval=100000"]


def test_one_run_writes_a_run_folder_and_its_job_listens_on_loopback_only(base):
    work = new_folder(base, "busy")
    config = [*tiny_job_config(work, base["data"]), "tracking.run_name=busy", "launch.nproc_per_node=2"]
    first = start_run(work, config, *LONG_RUN, env=os.environ | SLOW)  # trains while the test tries it
    try:
        read_until(first, "step      2/")
        addresses = listening_addresses(psutil.Process(first.pid))
        assert addresses and addresses <= LOOPBACK, addresses  # rendezvous, the ranks' store, gloo
        started = time.monotonic()
        second = pretrain("train", *config, *LONG_RUN, cwd=work, check=False)
        assert second.returncode == 1 and time.monotonic() - started < 30
        assert re.search(r"runs/busy is in use by `pretrain train \(2 ranks\)` \(pid \d+ on ", second.stderr)
        synced = pretrain("runs", "sync", str(work / "runs" / "busy"), cwd=work, check=False)
        assert synced.returncode == 1 and "runs/busy is in use by `pretrain train (2 ranks)`" in synced.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output[-3000:]


def test_a_data_build_holds_its_folder_and_its_ray_listens_on_loopback_only(tmp_path, make_documents):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in make_documents(300)))
    build = ["data", "build", f"data.sources=[{{name: web, paths: [{corpus}]}}]", f"data.output_dir={tmp_path / 'd'}"]
    first = subprocess.Popen(
        [sys.executable, "-m", "pretrain.cli", *build], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while not any(p.name() == "raylet" for p in psutil.Process(first.pid).children(recursive=True)):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        second = pretrain(*build, cwd=tmp_path, check=False)
        assert second.returncode == 1 and f"{tmp_path / 'd'} is in use by `pretrain data build`" in second.stderr
        addresses = listening_addresses(psutil.Process(first.pid))
        assert addresses and addresses <= LOOPBACK, addresses  # Ray's GCS, raylet, agents and workers
    finally:
        output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output[-3000:]


def is_rank(process: psutil.Process) -> bool:
    try:
        return "LOCAL_RANK" in process.environ()
    except psutil.Error:
        return False


def test_sigterm_while_the_job_starts_stops_it_cleanly_with_exit_0(base):
    work = new_folder(base, "early")
    config = [*tiny_job_config(work, base["data"]), "tracking.run_name=early", "launch.nproc_per_node=2"]
    in_preflight = start_run(work, config, *LONG_RUN)
    while not any("libarrow" in m.path for m in psutil.Process(in_preflight.pid).memory_maps()):
        time.sleep(0.02)  # importing pyarrow to check the dataset: its handlers were installed before
    in_preflight.send_signal(signal.SIGTERM)
    output = in_preflight.communicate(timeout=120)[0]
    assert in_preflight.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "stopped on request before the job started; nothing to save" in output
    starting = start_run(work, config, *LONG_RUN)
    deadline = time.time() + 120
    while not any(is_rank(p) for p in psutil.Process(starting.pid).children(recursive=True)):
        assert starting.poll() is None and time.time() < deadline
        time.sleep(0.05)
    starting.send_signal(signal.SIGTERM)  # the ranks are importing: they ignore SIGTERM until their handler is in
    output = starting.communicate(timeout=300)[0]
    assert starting.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "stopped on request before training began" in output or "SIGTERM: stopped after step 1," in output


def test_ctrl_c_saves_marks_the_run_killed_and_exits_130(base):
    work = new_folder(base, "ctrl-c")
    config = [*tiny_job_config(work, base["data"]), "tracking.run_name=base", "launch.nproc_per_node=2"]
    run = start_run(work, config, *LONG_RUN, session=True)
    read_until(run, "step      2/")
    os.killpg(run.pid, signal.SIGINT)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 130, output[-3000:]
    assert "Ctrl-C: the ranks finish their step and save a checkpoint" in output and "Traceback" not in output
    step = int(re.search(r"stopped after step (\d+), saved", output).group(1))
    assert latest_tag(work / "runs" / "base") == f"step_{step:08d}"
    _, killed = mlflow_run(work)
    assert killed.info.status == "KILLED"


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_last_complete_checkpoint_intact(base):
    work = new_folder(base, "ctrl-c-twice")
    config = [*tiny_job_config(work, base["data"]), "tracking.run_name=twice", "launch.nproc_per_node=2"]
    run = start_run(work, config, *LONG_RUN, "checkpoint.every_steps=1", session=True)
    read_until(run, "step      3/")
    tree = psutil.Process(run.pid).children(recursive=True)
    os.killpg(run.pid, signal.SIGINT)
    read_until(run, "Ctrl-C: ")
    os.killpg(run.pid, signal.SIGINT)
    started = time.monotonic()
    output = run.communicate(timeout=60)[0]
    assert run.returncode == 130 and time.monotonic() - started < 10, output[-3000:]
    assert "pretrain train: interrupted" in output and "Traceback" not in output
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == []
    run_dir = work / "runs" / "twice"
    assert verify(checkpoint_dir(run_dir) / latest_tag(run_dir))["step"] >= 2  # saved before step 3 was printed


def test_an_altered_shard_stops_training_naming_it(base, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(base["data"], data)
    shard = next(data.glob("train-*.arrow"))
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0x10  # one bit of one token: the same size, still a valid Arrow file
    shard.write_bytes(bytes(content))
    config = [
        *tiny_job_config(tmp_path, data),
        "launch.nproc_per_node=1",
        "train.max_steps=2",
        "lr_schedule.warmup_steps=1",
    ]
    trained = pretrain("train", *config, cwd=tmp_path, check=False)
    assert trained.returncode == 1
    assert f"{shard}: its checksum differs from the manifest's: the shard was altered or damaged" in trained.stderr
    assert "Traceback" not in trained.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB file system: room for one checkpoint of the one-rank tiny run, not for two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        unavailable(f"a small file system for the full-disk test: mount failed ({mounted.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_named_and_the_previous_checkpoint_is_intact(base, small_disk):
    work = small_disk.parent
    config = [*tiny_job_config(work, base["data"]), f"checkpoint.root={small_disk}", "tracking.run_name=full"]
    settings = [
        "launch.nproc_per_node=1",
        "parallel.zero_stage=0",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=1",
    ]
    settings += ["train.max_steps=6", "lr_schedule.warmup_steps=1"]
    filled = pretrain("train", *config, *settings, cwd=work, check=False)
    run_dir = small_disk / "full"
    assert filled.returncode == 1
    assert re.search(rf"{checkpoint_dir(run_dir)}/step_0000000\d/\S+: no space left on device", filled.stderr)
    assert "the previous checkpoint is intact" in filled.stderr and "Traceback" not in filled.stderr
    tag = latest_tag(run_dir)
    assert verify(checkpoint_dir(run_dir) / tag)["step"] >= 1
    assert [p.name for p in checkpoint_dir(run_dir).glob("step_*")] == [tag]  # what the failed save took is freed
    with open(small_disk / "filler", "wb") as filler:  # nothing at all left
        while True:
            try:
                filler.write(b"\0" * 65536)
                filler.flush()
            except OSError:
                break
    resumed = pretrain("train", *config, *settings, cwd=work, check=False)
    assert resumed.returncode == 1 and "no space left on device" in resumed.stderr, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert verify(checkpoint_dir(run_dir) / tag)["step"] >= 1
