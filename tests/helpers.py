"""What several test files share: running the real `pretrain` CLI as a user would, reading what runs left in
MLflow, free ports, a real `mlflow server`, and skipping what this machine cannot run."""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pretrain.tracking.metric_names import tracked_name

ROOT = Path(__file__).resolve().parent.parent


def pretrain(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "pretrain.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pretrain {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def read_until(process: subprocess.Popen, prefix: str) -> str:
    """What a process started with its output piped has printed, up to the first line that starts with `prefix`."""
    output = ""
    for line in process.stdout:
        output += line
        if line.startswith(prefix):
            return output
    raise AssertionError(f"the run ended before printing {prefix!r}:\n{output[-3000:]}")


def tiny_job_config(work: Path, data_dir: Path) -> list[str]:
    """The tiny config, with data, runs and the MLflow store in the test's folders."""
    return [
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        f"data.output_dir={data_dir}",
        f"checkpoint.root={work / 'runs'}",
        f"tracking.uri={tracking_store(work)}",
    ]


def tracking_store(work: Path) -> str:
    """The URI of the MLflow store in `work`. A new one is a copy of an empty store with MLflow's tables made,
    made once in the folder above: it spares each run's rank 0 the schema migrations of a new store (1 CPU-s)."""
    store = work / "mlflow.db"
    if not store.exists():
        empty = work.parent / "empty-mlflow.db"
        if not empty.exists():
            making = empty.with_name(f"{empty.name}.{os.getpid()}")
            MlflowClient(f"sqlite:///{making}").search_experiments()
            os.replace(making, empty)  # whole, should another worker look for it meanwhile
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty, store)
    return f"sqlite:///{store}"


def logged_metric(work: Path, run_name: str, key: str = "loss") -> dict[int, float]:
    """A metric of a run in the tiny experiment, by step; a step logged twice (a resumed run) keeps its last value."""
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    history = sorted(client.get_metric_history(run.info.run_id, tracked_name(key)), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


# The layout tests' run: ten steps, a loss logged at every one.
LAYOUT_RUN = ["train.max_steps=10", "lr_schedule.warmup_steps=2", "train.log_interval=1", "eval.interval=10"]
TWO_RANKS_ZERO1 = ("launch.nproc_per_node=2", "parallel.zero_stage=1")
# Rank 0 made slow (pretrain/train/faults.py), for a run that a test stops, kills or waits beside: a sleep, in
# which the other ranks wait in their collective, leaves the CPU to the tests running beside (the tiny job's
# steps take 0.1 s at full speed, on every core).
SLOW = {"PRETRAIN_FAULT_SLOW_RANK": "0:0.3"}


def train_losses(work: Path, config: list[str], name: str, *layout: str, env: dict | None = None) -> list[float]:
    """Ten steps of the tiny job in the given parallel layout, global batch 16; the loss of every step."""
    pretrain("train", *config, f"tracking.run_name={name}", *LAYOUT_RUN, *layout, cwd=work, env=env)
    return list(logged_metric(work, name).values())


def validation_batches(run_dir: Path, data_dir: Path):
    """The micro-batches (inputs, targets[, document ids]) of every rank that the trainer's validation ran on; the
    targets of padding rows (eval.batches=all) are -100, counting for nothing."""
    from data_pipeline.shards import read_manifest
    from pretrain.config import load_config
    from pretrain.evaluation.validation import HeldOut

    config = load_config(run_dir / "config.yaml")
    train = config.train
    for rank in range(config.dp_size):
        held_out = HeldOut(
            data_dir,
            read_manifest(data_dir),
            train.seq_len,
            train.micro_batch_size,
            config.eval.batches,
            (rank, config.dp_size),
            train.seed,
            document_ids=train.document_masking,
        )
        yield from held_out.micro_batches(held_out.parts[0])


def kill_rank_after_first_checkpoint(run_dir: Path, rank: int = 1, timeout_s: float = 600) -> None:
    """kill -9 one rank of a running job, wherever its scheduler started it, once the first checkpoint is
    complete, at a random moment within the next second: its process is the one its heartbeat names
    (pretrain/train/heartbeat.py)."""
    from pretrain.layout import CHECKPOINTS_DIR, HEARTBEATS_DIR, LATEST_NAME

    deadline = time.time() + timeout_s
    while not (run_dir / CHECKPOINTS_DIR / LATEST_NAME).is_file():
        assert time.time() < deadline, f"{run_dir}: no checkpoint after {timeout_s} s"
        time.sleep(0.1)
    time.sleep(random.uniform(0, 1))
    beat = json.loads((run_dir / HEARTBEATS_DIR / f"rank_{rank:05d}.json").read_text())
    os.kill(beat["pid"], signal.SIGKILL)


def steps_logged(work: Path, run_name: str, key: str = "loss") -> list[int]:
    """The steps of every value of a metric the run holds, in order: a step logged twice appears twice."""
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    return sorted(metric.step for metric in client.get_metric_history(run.info.run_id, tracked_name(key)))


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that are free now, all different (each socket is held until every port is picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def unavailable(reason: str) -> None:
    """Skip a test this machine cannot run, saying why; CI must run every test, so there it fails."""
    if os.environ.get("CI"):
        pytest.fail(f"CI runs every test, but this machine cannot: {reason}")
    pytest.skip(reason)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store, which a test may kill and start again."""

    def __init__(self, root: Path, app_name: str | None = None, env: dict[str, str] | None = None):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            *(["--app-name", app_name] if app_name else []),
        ]
        # Without the job runner (GenAI jobs, unused here) a server is 2 processes, not a dozen, and starts faster.
        self.env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        self.process = None

    def start(self) -> "MlflowServer":
        with open(self.root / "server.log", "ab") as log:
            # A session of its own: the server and its worker stop together, as one process group.
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.time() + 120
        while not self.healthy():
            if self.process.poll() is not None or time.time() > deadline:
                self.kill()
                raise RuntimeError(f"mlflow server did not start; see {self.root / 'server.log'}")
            time.sleep(0.5)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """Gone at once, as in a crash: no request is answered from here on."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
