"""MLflow tracking against a real `mlflow server`: the same code as the SQLite default."""

import pytest
from mlflow import MlflowClient

from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.tracking import Tracker, flatten

pytestmark = pytest.mark.slow


def test_run_params_batched_metrics_and_artifacts_reach_the_server(mlflow_server, tmp_path):
    config = load_config(
        overrides=[f"tracking.uri={mlflow_server}", "tracking.experiment=server-test", "tracking.run_name=r1"]
    )
    tracker = Tracker(config)
    for step in range(1, 251):
        tracker.log_metrics({"loss": 10.0 / step, "lr": 1e-3}, step)
        if step % 50 == 0:
            tracker.flush()  # asynchronous: returns before the server has answered
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    tracker.log_artifact(artifact)
    tracker.log_text("a sample", "samples/final.txt")
    tracker.finish()

    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "r1"
    assert run.data.params == flatten(config.to_dict())  # more than one batch of 100 parameters
    history = client.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 251))
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"note.txt", "samples"}


def test_resumed_tracker_continues_the_run(mlflow_server):
    config = load_config(overrides=[f"tracking.uri={mlflow_server}", "tracking.experiment=server-test"])
    first = Tracker(config)
    first.log_metrics({"loss": 2.0}, 1)
    first.finish()
    again = Tracker(config, run_id=first.run_id)
    again.log_metrics({"loss": 1.0}, 2)
    again.finish()
    history = MlflowClient(mlflow_server).get_metric_history(first.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]


def test_unreachable_server_is_a_config_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config = load_config(overrides=["tracking.uri=http://127.0.0.1:9", "tracking.experiment=x"])
    with pytest.raises(ConfigError, match="tracking.uri = 'http://127.0.0.1:9': MLflow cannot be reached"):
        Tracker(config)
