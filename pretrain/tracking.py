"""MLflow tracking of a training run, from rank 0.

A synchronous `log_metric` against a server costs tens of milliseconds, which
would stall every training step. So metrics are buffered here and sent with
MLflow's asynchronous `log_batch` once per log interval: the training loop
never waits on the network.
"""

from __future__ import annotations

import platform
import socket
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pretrain.config import Config
from pretrain.errors import ConfigError

# MLflow accepts at most 100 parameters in one log_batch call.
_PARAMS_PER_BATCH = 100


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class Tracker:
    """One MLflow run: parameters at the start, batched metrics, artifacts, a status at the end."""

    def __init__(self, config: Config, run_id: str | None = None):
        self.client = MlflowClient(config.tracking.uri)
        self._pending: list[Metric] = []
        self._operations = []
        if run_id is not None:
            self.run_id = run_id
            return
        try:
            experiment = self.client.get_experiment_by_name(config.tracking.experiment)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(config.tracking.experiment)
            )
        except mlflow.exceptions.MlflowException as err:
            raise ConfigError(
                f"tracking.uri = {config.tracking.uri!r}: MLflow cannot be reached or used ({err}); "
                f"use sqlite:///mlflow.db or the address of a running `mlflow server`"
            ) from err
        run = self.client.create_run(
            experiment_id,
            run_name=config.tracking.run_name,
            tags={
                "world_size": str(config.world_size),
                "layout": f"dp{config.dp_size}-tp{config.parallel.tensor_parallel_size}-zero{config.parallel.zero_stage}",
                "host": socket.gethostname(),
                "python": platform.python_version(),
            },
        )
        self.run_id = run.info.run_id
        params = [Param(key, value[:6000]) for key, value in flatten(config.to_dict()).items()]
        for start in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), timestamp, step) for key, value in metrics.items())

    def flush(self) -> None:
        """Send buffered metrics in the background."""
        if self._pending:
            self._operations.append(self.client.log_batch(self.run_id, metrics=self._pending, synchronous=False))
            self._pending = []

    def set_tags(self, tags: dict[str, object]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        for operation in self._operations:
            operation.wait()
        self.client.set_terminated(self.run_id, status)
