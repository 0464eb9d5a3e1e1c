"""MLflow tracking of a training run, from rank 0, that never slows or stops training.

A synchronous `log_metric` against a server costs milliseconds (15 ms on
127.0.0.1, docs/benchmarks.md), which would stall every training step. So metrics and tags are buffered here and sent with
MLflow's asynchronous `log_batch` once per log interval, and artifacts are
uploaded by a background thread: after the start, the training loop never
waits on the network; only `finish()` waits, for what is still in flight.

When the server cannot be reached, at the start or at any point later, the
tracker says so once on stderr and from then on writes everything (the run's
creation, metrics, tags, artifacts, final status) to the spool in the run
folder (pretrain/tracking/spool.py), which `pretrain runs sync RUN_DIR` sends later.
A server that answers but refuses (wrong credentials, no permission) is a user
error, raised as TrackingError at the start rather than spooled in silence.

What a run records: the resolved config as parameters; tags for the git
commit, world size and layout, host and versions (pretrain/tracking/run_info.py); the
loop's metrics plus `system/...` metrics (pretrain/tracking/system_metrics.py); the
loop's artifacts plus `plots/loss_curve.png`, redrawn at each validation.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from data_pipeline.locks import FolderLock
from pretrain.config import Config, load_config
from pretrain.errors import TrackingError
from pretrain.layout import CONFIG_NAME, SPOOL_DIR
from pretrain.tracking.metric_names import LEARNING_RATE, TRAIN_LOSS, VAL_LOSS, tracked_name
from pretrain.tracking.run_info import flatten, run_tags
from pretrain.tracking.spool import Spool, SyncReport, create_run, now_ms, sync_spool
from pretrain.tracking.system_metrics import PREFIX, SystemMetricsSampler

# What a failed request to MLflow raises: its own exception, or requests' for an artifact upload.
REQUEST_ERRORS = (MlflowException, requests.RequestException)
# MLflow's defaults retry a failed request 7 times with a doubling backoff, each
# try waiting up to 120 s for an answer: minutes before a dead server is noticed
# and before `finish()` could return. Variables the user has set win.
SHORT_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
TRAINING_VIEW = "workflowType=machine_learning"
PLOTTED = (TRAIN_LOSS, VAL_LOSS, LEARNING_RATE)  # the loss curve's
# Any one system metric tells at which step a resumed run's samples go on.
SYSTEM_PROBE = PREFIX + "cpu_utilization_percentage"


def configure_mlflow_client() -> None:
    for name, value in SHORT_HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    # MLflow logs an error for every failed asynchronous batch; the tracker spools
    # those batches and says so once, so the repeated lines would only be noise.
    logging.getLogger("mlflow.utils.async_logging.async_logging_queue").setLevel(logging.CRITICAL)


@dataclass
class _InFlight:
    """A request sent in the background, and how to keep what it carries should it fail."""

    sent: concurrent.futures.Future
    spool: Callable[[], None]


class MlflowTracker:
    """One MLflow run (a Tracker, pretrain/tracking/base.py): parameters at the start, batched metrics,
    artifacts, a status at the end.

    `run_id` is the MLflow run id; None while the run exists only in the spool
    (the server was down from the start). A resumed Tracker gets the run id
    from the checkpoint, or None, and continues the run in the run folder's
    spool if there is one, which it first sends to the server if it can.
    """

    def __init__(self, config: Config, run_id: str | None = None):
        configure_mlflow_client()
        self.uri, self.run_id, self.offline = config.tracking.uri, run_id, False
        self.client = MlflowClient(self.uri)
        self.spool = Spool(config.run_dir / SPOOL_DIR)
        self.run = {
            "experiment": config.tracking.experiment,
            "name": config.tracking.run_name,
            "start_time": now_ms(),
            "tags": run_tags(config),
        }
        # 6000 characters: the most MLflow keeps of a parameter's value.
        self.params = {key: value[:6000] for key, value in flatten(config.to_public_dict()).items()}
        self._lock = threading.Lock()  # the system-metrics thread logs too
        self._metrics: list[Metric] = []
        self._tags: list[RunTag] = []
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._last_batch: concurrent.futures.Future | None = None
        # One thread, so requests complete in the order they were made (see _check_in_flight).
        self._background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mlflow")
        resumed = run_id is not None or self.spool.exists()
        self._params_kept = resumed  # on the server or in the spool
        if self.spool.exists():
            self.spool.drop_torn_line()
            self.run_id = self.spool.run_id  # the spool's run: a sync may have created it since
        try:
            history = self._start_online(resumed)
        except REQUEST_ERRORS as err:
            if refused_status(err) is not None:
                raise refusal(self.uri, err) from err
            self._go_offline(err)
            self.run_id = self.spool.run_id  # a sync cut short may have created the run
            if resumed:
                self.spool.add_status("RUNNING")
            history = self.spool.metric_history((*PLOTTED, SYSTEM_PROBE)) if resumed else {}
        self.history = {key: history.get(key, []) for key in PLOTTED}
        self._curve_drawn: tuple[int, ...] = ()  # the history's lengths at the last drawing
        self.url = self._run_url()
        if self.url:
            print(f"MLflow run: {self.url}", flush=True)
        first_system_step = max((step for step, _ in history.get(SYSTEM_PROBE, [])), default=-1) + 1
        self.system_metrics = SystemMetricsSampler(self.log_metrics, first_system_step, self.uri)

    def _start_online(self, resumed: bool) -> dict[str, list[tuple[int, float]]]:
        """Create or continue the run on the server; the earlier history of a resumed run."""
        if self.spool.exists():
            report = sync_spool(self.spool, self.client)
            self.run_id = report.run_id
            if report.sent_anything:
                print(f"MLflow: sent {report.describe()} from {self.spool.folder} to run {self.run_id}", flush=True)
        elif self.run_id is None:
            self.run_id = create_run(self.client, self.run)
            self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in self.params.items()])
            self._params_kept = True
        if not resumed:
            return {}
        self.client.update_run(self.run_id, status="RUNNING")
        return {
            key: [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]
            for key in (*PLOTTED, SYSTEM_PROBE)
        }

    def _run_url(self) -> str | None:
        """The run's page in the MLflow UI, when the tracking URI is a server that has the run."""
        if self.offline or self.run_id is None or not self.uri.startswith(("http://", "https://")):
            return None
        try:
            experiment_id = self.client.get_run(self.run_id).info.experiment_id
        except REQUEST_ERRORS:
            return None  # the link is a convenience: training does not wait for it
        # MLflow 3's UI opens on its GenAI pages unless the link asks for its model-training ones.
        return f"{self.uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}?{TRAINING_VIEW}"

    def _go_offline(self, err: BaseException) -> None:
        """From now on everything goes to the spool, including what is still in flight.

        The fate of a request in flight is unknown: a batch of metrics that reaches
        the server after all is stored once even when the sync sends it again.
        """
        if self.offline:
            return
        self.offline = True
        if not self.spool.exists():
            self.spool.create(self.run, self.run_id, None if self._params_kept else self.params)
            self._params_kept = True
        for request in self._in_flight:
            request.sent.cancel()  # not started yet: it would only fail, slowly
            request.spool()
        self._in_flight.clear()
        print(
            f"MLflow at {self.uri} cannot be reached ({innermost_reason(err)}); training goes on and this run's "
            f"record goes to {self.spool.folder}: send it with `pretrain runs sync {self.spool.folder.parent}`",
            file=sys.stderr,
            flush=True,
        )

    def last_logged_step(self) -> int:
        return max((step for step, _ in self.history[TRAIN_LOSS]), default=-1)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer the loop's metrics under their MLflow names (pretrain/tracking/metric_names.py).

        A validation redraws the loss curve: it can be looked at while the run goes on.
        """
        timestamp = now_ms()
        named = {tracked_name(key): float(value) for key, value in metrics.items()}
        with self._lock:
            self._metrics.extend(Metric(name, value, timestamp, step) for name, value in named.items())
        for name in PLOTTED:
            if name in named:
                self.history[name].append((step, named[name]))
        if VAL_LOSS in named and self.history[TRAIN_LOSS]:  # at step 0 there is no curve yet, only a point
            self._log_loss_curve()

    def set_tags(self, tags: dict[str, object]) -> None:
        """Buffered like metrics: sent with the next flush."""
        with self._lock:
            self._tags.extend(RunTag(key, str(value)) for key, value in tags.items())

    def flush(self) -> None:
        """Send what is buffered in the background, or write it to the spool; never waits on the network.

        One batch at a time: while the server has not answered the last one, what
        is buffered stays for the next flush. A server that is slow or gone thus
        gets no queue of batches, each retried for seconds, and none is sent to
        it after the tracker has gone offline.
        """
        self._check_in_flight()
        if not self.offline and self._last_batch is not None and not self._last_batch.done():
            return
        with self._lock:
            metrics, self._metrics = self._metrics, []
            tags, self._tags = self._tags, []
        if not (metrics or tags):
            return
        if self.offline:
            self._spool_batch(metrics, tags)
            return
        operation = self.client.log_batch(self.run_id, metrics=metrics, tags=tags, synchronous=False)
        # RunOperations offers only a blocking wait(): our thread waits, so that a flush can look without waiting.
        self._last_batch = self._send(operation.wait, functools.partial(self._spool_batch, metrics, tags))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Read now, uploaded in the background: the file may change or go once this returns."""
        self._log_file(Path(path).name, Path(path).read_bytes(), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        artifact_path, _, name = artifact_file.rpartition("/")
        self._log_file(name, text.encode(), artifact_path or None)

    def finish(self, status: str = "FINISHED") -> None:
        """Stop system metrics, log the loss curve, wait for what is in flight, and set the final status."""
        self.system_metrics.stop()
        self._log_loss_curve()
        self._wait_in_flight()
        self.flush()
        self._wait_in_flight()
        if not self.offline:
            try:
                self.client.set_terminated(self.run_id, status)
                if self.url:
                    print(f"MLflow run ({status}): {self.url}", flush=True)
                return
            except REQUEST_ERRORS as err:
                self._go_offline(err)
        self.spool.add_status(status)

    def _send(self, request: Callable[[], object], spool: Callable[[], None]) -> concurrent.futures.Future:
        sent = self._background.submit(request)
        self._in_flight.append(_InFlight(sent, spool))
        return sent

    def _wait_in_flight(self) -> None:
        concurrent.futures.wait([request.sent for request in self._in_flight])
        self._check_in_flight()

    def _check_in_flight(self) -> None:
        """Forget the requests the server took; at the first one it did not take, go offline."""
        while self._in_flight and self._in_flight[0].sent.done():
            failure = self._in_flight[0].sent.exception()
            if failure is not None:
                self._go_offline(failure)  # spools this request and those behind it
                return
            self._in_flight.popleft()

    def _spool_batch(self, metrics: list[Metric], tags: list[RunTag]) -> None:
        if metrics:
            self.spool.add_metrics(metrics)
        if tags:
            self.spool.add_tags(tags)

    def _log_file(self, name: str, data: bytes, artifact_path: str | None) -> None:
        keep = functools.partial(self.spool.add_artifact, name, data, artifact_path)
        if self.offline:
            keep()
        else:
            self._send(functools.partial(self._upload, name, data, artifact_path), keep)

    def _upload(self, name: str, data: bytes, artifact_path: str | None) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def _log_loss_curve(self) -> None:
        """Draw the loss curve again, when there is something new to draw."""
        drawn = tuple(len(points) for points in self.history.values())
        if drawn != self._curve_drawn and any(drawn):
            self._log_file("loss_curve.png", loss_curve_png(self.history), "plots")
            self._curve_drawn = drawn


def loss_curve_png(history: dict[str, list[tuple[int, float]]]) -> bytes:
    """The training and validation loss against step, the learning rate on a second axis, as a PNG.

    Where a resumed run logged a step again, its later value wins.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)  # renders without a display, leaving pyplot's global state alone
    ax = fig.add_subplot()
    lr_axis = ax.twinx()
    lines = []
    for name, axis, style in ((TRAIN_LOSS, ax, "-"), (VAL_LOSS, ax, "-"), (LEARNING_RATE, lr_axis, ":")):
        points = history.get(name)
        if points:
            steps, values = zip(*sorted(dict(points).items()))
            marker = "o" if len(steps) < 30 and axis is ax else None
            lines += axis.plot(steps, values, style, marker=marker, markersize=3, label=name, color=f"C{len(lines)}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    lr_axis.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(lines, [line.get_label() for line in lines])
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return png.getvalue()


def refused_status(err: BaseException) -> int | None:
    """The HTTP status of a server that answered with a client error (credentials, permissions, a wrong id).

    None for anything else (no answer, a timeout, the server's own 5xx failure):
    the server cannot be reached for now, which is what the spool is for.
    """
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
    elif isinstance(err, requests.HTTPError) and err.response is not None:
        status = err.response.status_code
    else:
        return None
    return status if 400 <= status < 500 and status != 429 else None


def innermost_reason(err: BaseException) -> str:
    """The first cause of a failed request, on one line ("[Errno 111] Connection refused").

    Of a long message, the end: urllib3 and MLflow put the cause last.
    """
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    reason = " ".join(str(err).split())
    return reason if len(reason) <= 200 else "..." + reason[-200:]


def refusal(uri: str, err: BaseException) -> TrackingError:
    if refused_status(err) in (401, 403):
        hint = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server who may write runs"
    else:
        hint = "check tracking.uri and tracking.experiment, and that the run (its id is in the checkpoint) exists there"
    return TrackingError(f"MLflow at {uri} refused the request ({innermost_reason(err)}); {hint}")


def sync_run_dir(run_dir: Path, uri: str | None = None) -> tuple[SyncReport, str]:
    """Send a run folder's spool to MLflow at `uri`, or at the run's own tracking.uri (its config.yaml).

    It holds the run folder's lock meanwhile: neither a training run nor a second sync may write the spool.
    """
    if not run_dir.is_dir():
        raise TrackingError(f"{run_dir}: no such run folder; pass the folder `pretrain train` printed")
    with FolderLock(run_dir, "pretrain runs sync"):
        return _sync_run_dir(run_dir, uri)


def _sync_run_dir(run_dir: Path, uri: str | None) -> tuple[SyncReport, str]:
    spool = Spool(run_dir / SPOOL_DIR)
    if not spool.exists():
        raise TrackingError(
            f"{run_dir}: no MLflow spool ({spool.folder} does not exist), so nothing to sync; a run is spooled only "
            f"while its MLflow server cannot be reached"
        )
    config_path = run_dir / CONFIG_NAME
    if uri is None and not config_path.is_file():
        raise TrackingError(f"{config_path} does not exist, so the tracking URI is unknown: pass it with --uri")
    overrides = [f"tracking.uri={uri}"] if uri else []
    uri = load_config(config_path if config_path.is_file() else None, overrides).tracking.uri
    configure_mlflow_client()
    try:
        return sync_spool(spool, MlflowClient(uri)), uri
    except REQUEST_ERRORS as err:
        if refused_status(err) is not None:
            raise refusal(uri, err) from err
        raise TrackingError(
            f"MLflow at {uri} cannot be reached ({innermost_reason(err)}); what was sent so far is recorded in "
            f"{spool.folder}: start the server (or pass --uri) and run `pretrain runs sync {run_dir}` again"
        ) from err
