"""What the rest of pretrain asks of a tracking backend, whichever it is.

`Tracker` is one run's record as the training loop writes it: metrics by
step, tags, files, a final status. It never blocks training on the network:
a backend buffers, sends in the background, and keeps what it could not send.
`TrackingBackend` is the store of runs behind it, for the commands that read
past runs or publish models: `pretrain runs sync`, `pretrain jobs status`,
`pretrain export --register/--from-registry` and `export.registered_model`.

MLflow is the backend (pretrain/tracking/mlflow_backend.py). Another is one
module with a `BACKEND` object, one line in `BACKENDS`, and its name in the
`tracking.backend` setting.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pretrain.config import Config

# Imported when first asked for: MLflow takes over a second to import, which ranks that do not track never pay.
BACKENDS = {"mlflow": "pretrain.tracking.mlflow_backend"}
EVALUATIONS_DIR = "evaluations"  # a run's artifact folder of per-example task scores: the loop's and `pretrain eval`'s


class Tracker(Protocol):
    """One run's record, written by rank 0 as it trains."""

    run_id: str | None  # the backend's id of the run; None while it exists only where it was kept offline

    def last_logged_step(self) -> int:
        """The last step whose training loss the run holds (from before a restart); -1 for none."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, object]) -> None: ...

    def flush(self) -> None:
        """Send what is buffered, in the background; never waits on the network."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def finish(self, status: str = "FINISHED") -> None:
        """Wait for what is in flight and set the run's final status: FINISHED, FAILED or KILLED."""


@dataclass
class RegisteredVersion:
    name: str
    version: str
    source: str  # where its files are, in the backend's words (MLflow: runs:/RUN_ID/export/TAG/FORMAT-DTYPE)


@dataclass
class Evaluation:
    """What `pretrain eval` logs: metrics at the evaluated checkpoint's step, and its results file."""

    metrics: dict[str, float]
    step: int
    results: Path
    experiment: str
    run_id: str | None = None  # the training run the checkpoint belongs to: the scores join its metrics
    source_run_id: str | None = None  # without run_id: the training run an exported folder came from
    model: str = ""  # without run_id: the folder evaluated, named in the evaluation run


@dataclass
class SyncReport:
    """What `pretrain runs sync` sent: the run (created now or before) and how much of each kind."""

    run_id: str
    created: bool = False
    metrics: int = 0
    tags: int = 0
    artifacts: int = 0
    status: str | None = None

    @property
    def sent_anything(self) -> bool:
        return self.created or bool(self.metrics or self.tags or self.artifacts or self.status)

    def describe(self) -> str:
        parts = [f"{self.metrics} metrics", f"{self.tags} tags", f"{self.artifacts} artifacts"]
        return ", ".join(parts) + (f", status {self.status}" if self.status else "")


class TrackingBackend(Protocol):
    def start(self, config: Config, run_id: str | None) -> Tracker:
        """Start the run of `config`, or continue run `run_id` (a resumed run)."""

    def sync(self, run_dir: Path, uri: str | None) -> tuple[SyncReport, str]:
        """Send what a run folder kept while the store could not be reached; the report and the store's URI."""

    def job_run(self, uri: str, experiment: str, job_tag: str) -> str:
        """The run a submitted job's training created (tagged with its job id), in words, or why it is not known."""

    def metric_at(self, uri: str, run_id: str | None, key: str, step: int) -> float | None:
        """The value of metric `key` that run `run_id` logged last at `step`; None if it logged none."""

    def log_evaluation(self, uri: str, evaluation: Evaluation) -> str:
        """Log `pretrain eval`'s scores to the training run (run_id given) or a new evaluation run linked to the
        training run by a tag; the run's id."""

    def register(
        self, folder: Path, info: dict, name: str, aliases: list[str], uri: str, val_loss: float | None
    ) -> RegisteredVersion:
        """Keep an exported folder with its training run and make it a new version of model `name`."""

    def fetch(self, reference: str, out_dir: Path, uri: str) -> tuple[Path, RegisteredVersion]:
        """Download the folder of NAME@ALIAS, NAME/VERSION or NAME (its newest version) into `out_dir`."""


def backend(name: str = "mlflow") -> TrackingBackend:
    return importlib.import_module(BACKENDS[name]).BACKEND
