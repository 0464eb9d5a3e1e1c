"""Running the real `pretrain` CLI from tests, as a user would, and reading what runs left in MLflow."""

import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

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
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
    ]


def logged_metric(work: Path, run_name: str, key: str = "loss") -> dict[int, float]:
    """A metric of a run in the tiny experiment, by step; a step logged twice (a resumed run) keeps its last value."""
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


# The layout tests' run: ten steps, a loss logged at every one.
LAYOUT_RUN = ["train.max_steps=10", "train.warmup_steps=2", "train.log_interval=1", "train.eval_interval=10"]
TWO_RANKS_ZERO1 = ("launch.nproc_per_node=2", "parallel.zero_stage=1")


def train_losses(work: Path, config: list[str], name: str, *layout: str) -> list[float]:
    """Ten steps of the tiny job in the given parallel layout, global batch 16; the loss of every step."""
    pretrain("train", *config, f"tracking.run_name={name}", *LAYOUT_RUN, *layout, cwd=work)
    return list(logged_metric(work, name).values())


def validation_batches(run_dir: Path, data_dir: Path):
    """The micro-batches (inputs, targets[, document ids]) of every rank that the trainer's validation ran on."""
    from data_pipeline.loader import BatchLoader
    from pretrain.config import load_config

    config = load_config(run_dir / "config.yaml")
    for rank in range(config.dp_size):
        loader = BatchLoader(
            data_dir,
            "val",
            config.train.seq_len,
            config.train.micro_batch_size,
            config.train.eval_batches,
            rank,
            config.dp_size,
            config.train.seed,
            document_ids=config.train.document_masking,
        )
        yield from loader.next_step()
