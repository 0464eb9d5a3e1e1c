"""MLflow as the tracking backend: the one module the rest of pretrain reaches MLflow through.

Runs are MLflow runs (mlflow_tracker.py, with the spool of spool.py while
the server is down); models go to MLflow's model registry
(mlflow_registry.py); a submitted job's run is found by its `pretrain.job_id`
tag. Every request uses short retries (`configure_mlflow_client`), so a
server that is gone is noticed in seconds, not minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from pretrain.config import Config
from pretrain.errors import TrackingError
from pretrain.tracking import mlflow_registry
from pretrain.tracking.base import EVALUATIONS_DIR, Evaluation, RegisteredVersion, SyncReport
from pretrain.tracking.metric_names import names_to_read, tracked_name
from pretrain.tracking.mlflow_tracker import REQUEST_ERRORS, MlflowTracker, configure_mlflow_client, sync_run_dir
from pretrain.tracking.run_info import JOB_TAG

EVALUATED_TAG = "pretrain.evaluated_model"  # an evaluation run's folder
SOURCE_RUN_TAG = "pretrain.source_run_id"  # and the training run that folder was exported from


class MlflowBackend:
    def start(self, config: Config, run_id: str | None) -> MlflowTracker:
        return MlflowTracker(config, run_id)

    def sync(self, run_dir: Path, uri: str | None) -> tuple[SyncReport, str]:
        return sync_run_dir(run_dir, uri)

    def job_run(self, uri: str, experiment: str, job_tag: str) -> str:
        configure_mlflow_client()
        client = MlflowClient(uri)
        try:
            found = client.get_experiment_by_name(experiment)
            runs = (
                client.search_runs([found.experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{job_tag}'")
                if found
                else []
            )
        except REQUEST_ERRORS as err:
            return f"unknown: MLflow at {uri} cannot be asked ({type(err).__name__})"
        if not runs:
            return f"none yet in experiment {experiment!r} at {uri} (the job has not started training)"
        run = runs[0]
        return f"{run.info.run_id} ({run.info.status}) in experiment {experiment!r} at {uri}"

    def metric_at(self, uri: str, run_id: str | None, key: str, step: int) -> float | None:
        if not run_id:
            return None
        configure_mlflow_client()
        try:
            client = MlflowClient(uri)
            history = [m for name in names_to_read(key) for m in client.get_metric_history(run_id, name)]
        except REQUEST_ERRORS as err:
            raise TrackingError(f"reading run {run_id} at {uri} failed: {err}") from None
        at_step = sorted((m.timestamp, m.value) for m in history if m.step == step)
        return at_step[-1][1] if at_step else None

    def log_evaluation(self, uri: str, evaluation: Evaluation) -> str:
        configure_mlflow_client()
        client = MlflowClient(uri)
        try:
            run_id = evaluation.run_id or self._evaluation_run(client, evaluation)
            timestamp = int(time.time() * 1000)
            metrics = [
                Metric(tracked_name(key), value, timestamp, evaluation.step)
                for key, value in evaluation.metrics.items()
            ]
            client.log_batch(run_id, metrics=metrics)
            client.log_artifact(run_id, str(evaluation.results), EVALUATIONS_DIR)
            if not evaluation.run_id:
                client.set_terminated(run_id)
        except REQUEST_ERRORS as err:
            raise TrackingError(f"logging the evaluation to MLflow at {uri} failed: {err}") from None
        return run_id

    @staticmethod
    def _evaluation_run(client: MlflowClient, evaluation: Evaluation) -> str:
        """A run of its own for scores of a folder; tagged with the training run the folder was exported from."""
        found = client.get_experiment_by_name(evaluation.experiment)
        experiment = found.experiment_id if found else client.create_experiment(evaluation.experiment)
        tags = {EVALUATED_TAG: evaluation.model}
        if evaluation.source_run_id:
            tags[SOURCE_RUN_TAG] = evaluation.source_run_id
        run = client.create_run(experiment, run_name=f"eval-{Path(evaluation.model).name}", tags=tags)
        return run.info.run_id

    def register(
        self, folder: Path, info: dict, name: str, aliases: list[str], uri: str, val_loss: float | None
    ) -> RegisteredVersion:
        return mlflow_registry.register(folder, info, name, aliases, uri, val_loss)

    def fetch(self, reference: str, out_dir: Path, uri: str) -> tuple[Path, RegisteredVersion]:
        return mlflow_registry.fetch(reference, out_dir, uri)


BACKEND = MlflowBackend()
