"""A run's MLflow record kept in the run folder while the server cannot be reached, and its replay.

The tracker writes here when MLflow is down at the start of a run or stops
answering during it, so that training neither waits nor loses anything.
`pretrain runs sync RUN_DIR`, or the next tracker of the same run folder (a
resumed run) that reaches the server, replays the record in the order it was
logged. The folder, `<run folder>/mlflow_spool/`:

    run.json       the run as it is to be created: experiment, name, start time, tags
    events.jsonl   one JSON object a line, in logging order: params, metrics, tags, artifact, status
    artifacts/     a copy of each file logged as an artifact, in a numbered folder
    synced.json    the MLflow run id once the run exists, and how many events the server holds

Replaying is idempotent: synced.json moves forward only after the server has
taken a group of events, and MLflow's SQL stores keep one copy of a metric
sent twice (same key, step, timestamp and value), so neither a sync that was
cut short and is run again, nor a batch that reached the server just before
the tracker spooled it, counts twice.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pretrain.layout import write_json_atomically
from pretrain.tracking.base import SyncReport

# The most metrics MLflow takes in one log_batch call: the unit of progress of a sync.
METRICS_PER_BATCH = 1000


def now_ms() -> int:
    return int(time.time() * 1000)


class Spool:
    """The files of one spooled run. Every method is a local file operation: no network."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.events_path = folder / "events.jsonl"

    def exists(self) -> bool:
        return (self.folder / "run.json").is_file()

    def create(self, run: dict, run_id: str | None, params: dict[str, str] | None) -> None:
        """Start a spool for `run`: not yet created in MLflow (`run_id` None), or created already."""
        (self.folder / "artifacts").mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.folder / "run.json", run)
        write_json_atomically(self.folder / "synced.json", {"run_id": run_id, "events": 0})
        self.events_path.touch()
        if params:
            self._append({"kind": "params", "params": params})

    def run(self) -> dict:
        return json.loads((self.folder / "run.json").read_text())

    def synced(self) -> dict:
        return json.loads((self.folder / "synced.json").read_text())

    @property
    def run_id(self) -> str | None:
        return self.synced()["run_id"]

    def record_synced(self, run_id: str, events: int) -> None:
        write_json_atomically(self.folder / "synced.json", {"run_id": run_id, "events": events})

    def add_metrics(self, metrics: list[Metric]) -> None:
        self._append({"kind": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]})

    def add_tags(self, tags: list[RunTag]) -> None:
        self._append({"kind": "tags", "tags": {tag.key: tag.value for tag in tags}})

    def add_artifact(self, name: str, data: bytes, artifact_path: str | None) -> None:
        """A file's content as it was logged, kept as `name` under a numbered folder of artifacts/."""
        folder = self.folder / "artifacts" / f"{sum(1 for _ in (self.folder / 'artifacts').iterdir()):05d}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        self._append(
            {"kind": "artifact", "file": f"{folder.relative_to(self.folder)}/{name}", "artifact_path": artifact_path}
        )

    def add_status(self, status: str) -> None:
        self._append({"kind": "status", "status": status, "time": now_ms()})

    def events(self) -> list[dict]:
        """Every complete event. A last line without its newline was cut short by a crash: left out."""
        return [json.loads(line) for line in self.events_path.read_text().split("\n")[:-1]]

    def drop_torn_line(self) -> None:
        """Cut a line left unfinished by a crash, so the next event starts on a line of its own."""
        text = self.events_path.read_bytes()
        if text and not text.endswith(b"\n"):
            os.truncate(self.events_path, text.rfind(b"\n") + 1)

    def metric_history(self, keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        history = {key: [] for key in keys}
        for event in self.events():
            if event["kind"] == "metrics":
                for key, value, _, step in event["metrics"]:
                    if key in history:
                        history[key].append((step, value))
        return history

    def _append(self, event: dict) -> None:
        with open(self.events_path, "a") as f:
            f.write(json.dumps(event) + "\n")


EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def create_run(client: MlflowClient, run: dict) -> str:
    """Create `run` (as run.json describes it) in its experiment, creating the experiment if needed."""
    experiment = client.get_experiment_by_name(run["experiment"])
    if experiment:
        experiment_id = experiment.experiment_id
    else:  # a training experiment: MLflow 3's UI then opens it on its runs and charts, not on its GenAI pages
        experiment_id = client.create_experiment(run["experiment"], tags={EXPERIMENT_KIND: TRAINING_KIND})
    created = client.create_run(experiment_id, start_time=run["start_time"], tags=run["tags"], run_name=run["name"])
    return created.info.run_id


def sync_spool(spool: Spool, client: MlflowClient) -> SyncReport:
    """Send the events the server does not hold yet, creating the run if it never was.

    Raises what MLflow raises when a request fails; what was sent before stays recorded.
    """
    run_id = spool.run_id
    report = SyncReport(run_id)
    if run_id is None:
        run_id = report.run_id = create_run(client, spool.run())
        report.created = True
        spool.record_synced(run_id, 0)
    events, done = spool.events(), spool.synced()["events"]
    metrics: list[Metric] = []
    for index, event in enumerate(events[done:], start=done):
        if event["kind"] == "metrics":
            metrics += [Metric(*fields) for fields in event["metrics"]]
            if len(metrics) < METRICS_PER_BATCH and index + 1 < len(events):
                continue
        if metrics:
            client.log_batch(run_id, metrics=metrics)
            report.metrics += len(metrics)
            metrics = []
        if event["kind"] != "metrics":
            _replay(client, spool, run_id, event, report)
        spool.record_synced(run_id, index + 1)
    return report


def _replay(client: MlflowClient, spool: Spool, run_id: str, event: dict, report: SyncReport) -> None:
    kind = event["kind"]
    if kind == "params":
        client.log_batch(run_id, params=[Param(key, value) for key, value in event["params"].items()])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in event["tags"].items()])
        report.tags += len(event["tags"])
    elif kind == "artifact":
        client.log_artifact(run_id, str(spool.folder / event["file"]), event["artifact_path"])
        report.artifacts += 1
    elif event["status"] == "RUNNING":  # a resumed run
        client.update_run(run_id, status="RUNNING")
        report.status = "RUNNING"
    else:
        client.set_terminated(run_id, event["status"], end_time=event["time"])
        report.status = event["status"]
