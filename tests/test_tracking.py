"""MLflow tracking against real `mlflow server`s: batched metrics, the offline spool and its sync, basic auth."""

import getpass
import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pretrain.cli import main
from pretrain.config import load_config, save_config
from pretrain.errors import ConfigError, TrackingError
from pretrain.layout import SPOOL_DIR
from pretrain.tracking.metric_names import tracked_name
from pretrain.tracking.mlflow_tracker import MlflowTracker, flatten
from pretrain.tracking.run_info import PROJECT_ROOT, describe_run, git_state
from pretrain.tracking.spool import Spool

pytestmark = pytest.mark.slow

WARNING = "cannot be reached"


def tracking_config(uri: str, tmp_path, name: str = "r1"):
    return load_config(
        overrides=[
            f"tracking.uri={uri}",
            "tracking.experiment=server-test",
            f"tracking.run_name={name}",
            f"checkpoint.root={tmp_path / 'runs'}",
        ]
    )


def the_run(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name("server-test")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return run


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, tracked_name(key)))


def test_run_params_tags_metrics_and_artifacts_reach_the_server(mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    config = tracking_config(mlflow_server, tmp_path)
    tracker = MlflowTracker(config)
    run_url = f"{mlflow_server}/#/experiments/{MlflowClient(mlflow_server).get_run(tracker.run_id).info.experiment_id}"
    assert f"MLflow run: {run_url}/runs/{tracker.run_id}?workflowType=machine_learning\n" in capsys.readouterr().out
    for step in range(1, 251):
        tracker.log_metrics({"loss": 10.0 / step, "lr": 1e-3}, step)
        if step % 50 == 0:
            tracker.flush()  # asynchronous: returns before the server has answered
        if step == 100:  # a validation redraws the loss curve while the run goes on
            tracker.log_metrics({"val_loss": 0.7}, step)
            tracker._wait_in_flight()
            assert [a.path for a in MlflowClient(mlflow_server).list_artifacts(tracker.run_id, "plots")] == [
                "plots/loss_curve.png"
            ]
    tracker.log_metrics({"val_loss": 0.5}, 250)
    tracker.set_tags({"data.fingerprint": "abc"})
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    tracker.log_artifact(artifact)
    artifact.unlink()  # read when logged, uploaded later
    tracker.log_text("a sample", "samples/final.txt")
    deadline = time.time() + 30
    while tracker.system_metrics.step < 2 and time.time() < deadline:  # two samples; the interval is 0.2 s here
        time.sleep(0.1)
    tracker.finish()

    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "r1"
    assert run.data.params == flatten(config.to_dict())
    assert run.data.tags["data.fingerprint"] == "abc"
    assert (run.data.tags["mlflow.source.git.commit"], run.data.tags["git.dirty"]) == git_state(PROJECT_ROOT)
    assert run.data.tags["mlflow.source.name"] == "pretrain train" and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["mlflow.user"] == getpass.getuser()
    experiment = client.get_experiment(run.info.experiment_id)  # opened by the UI on its runs, not on GenAI pages
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["mlflow.note.content"] == describe_run(config)
    assert describe_run(config).startswith("GPT 12 layers x 768 wide (learned, layernorm, gelu), ")
    assert run.data.tags["world_size"] == "1" and run.data.tags["layout"] == "dp1-tp1-zero1"
    assert {"version.torch", "version.deepspeed", "version.mlflow", "version.python", "version.pretrain"} <= set(
        run.data.tags
    )
    assert steps_of(client, tracker.run_id, "loss") == list(range(1, 251))
    grouped = {"train/loss", "train/lr", "eval/loss", "system/cpu_utilization_percentage"}
    assert grouped <= set(run.data.metrics) and not {"loss", "lr", "val_loss"} & set(run.data.metrics)
    assert f"MLflow run (FINISHED): {run_url}/runs/{tracker.run_id}?workflowType" in capsys.readouterr().out
    assert steps_of(client, tracker.run_id, "system/cpu_utilization_percentage")[:2] == [0, 1]
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"note.txt", "samples", "plots"}
    assert [a.path for a in client.list_artifacts(tracker.run_id, "plots")] == ["plots/loss_curve.png"]
    png = client.download_artifacts(tracker.run_id, "plots/loss_curve.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resumed_tracker_continues_the_run(mlflow_server, tmp_path):
    config = tracking_config(mlflow_server, tmp_path, "resumed")
    first = MlflowTracker(config)
    first.log_metrics({"loss": 2.0}, 1)
    first.finish("FAILED")
    again = MlflowTracker(config, run_id=first.run_id)
    assert again.history["train/loss"] == [(1, 2.0)]  # the earlier history, for the loss curve
    again.log_metrics({"loss": 1.0}, 2)
    again.finish()
    client = MlflowClient(mlflow_server)
    history = client.get_metric_history(first.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_unreachable_server_spools_and_runs_sync_sends_everything_once(
    mlflow_server, unreachable_mlflow_uri, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a user's setting wins over the tracker's default
    config = tracking_config(unreachable_mlflow_uri, tmp_path, "offline")
    save_config(config, config.run_dir / "config.yaml")
    tracker = MlflowTracker(config)
    assert tracker.run_id is None  # no MLflow run yet
    for step in range(1, 101):
        tracker.log_metrics({"loss": 10.0 / step}, step)
        if step % 10 == 0:
            tracker.flush()
    tracker.set_tags({"data.fingerprint": "abc"})
    tracker.log_artifact(config.run_dir / "config.yaml")
    tracker.log_text("a sample", "samples/final.txt")
    tracker.finish()
    warning = capsys.readouterr().err
    assert warning.count(WARNING) == 1
    assert f"pretrain runs sync {config.run_dir}" in warning

    # config.yaml names the server that was down: sync says so, and that it can be run again.
    assert main(["runs", "sync", str(config.run_dir)]) == 1
    assert "cannot be reached" in capsys.readouterr().err
    assert main(["runs", "sync", str(config.run_dir), "--uri", mlflow_server]) == 0
    assert "sent 100 metrics, 1 tags, 3 artifacts, status FINISHED" in capsys.readouterr().out
    assert main(["runs", "sync", str(config.run_dir), "--uri", mlflow_server]) == 0
    assert "nothing left to send" in capsys.readouterr().out

    client = MlflowClient(mlflow_server)
    run = the_run(client, "offline")
    assert run.info.status == "FINISHED"
    assert run.data.params == flatten(config.to_dict())
    assert run.data.tags["data.fingerprint"] == "abc" and "mlflow.source.git.commit" in run.data.tags
    assert steps_of(client, run.info.run_id, "loss") == list(range(1, 101))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "samples", "plots"}


def test_resumed_run_continues_the_spool_then_sends_it_when_the_server_is_back(
    mlflow_server, unreachable_mlflow_uri, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = tracking_config(unreachable_mlflow_uri, tmp_path, "comeback")
    first = MlflowTracker(down)
    first.log_metrics({"loss": 3.0}, 1)
    first.finish("FAILED")
    second = MlflowTracker(down, run_id=first.run_id)  # the checkpoint's run id: None
    assert second.history["train/loss"] == [(1, 3.0)]  # from the spool
    second.log_metrics({"loss": 2.0}, 2)
    second.finish("FAILED")
    assert Spool(down.run_dir / SPOOL_DIR).run()["name"] == "comeback"  # one spooled run, continued

    up = tracking_config(mlflow_server, tmp_path, "comeback")
    third = MlflowTracker(up, run_id=second.run_id)  # sends the spool first, then goes on online
    assert third.run_id is not None and not third.offline
    third.log_metrics({"loss": 1.0}, 3)
    third.finish()
    client = MlflowClient(mlflow_server)
    run = the_run(client, "comeback")
    assert run.info.run_id == third.run_id and run.info.status == "FINISHED"
    assert sorted((m.step, m.value) for m in client.get_metric_history(third.run_id, "train/loss")) == [
        (1, 3.0),
        (2, 2.0),
        (3, 1.0),
    ]


def test_server_killed_mid_run_loses_nothing(restartable_mlflow_server, tmp_path, capsys):
    server = restartable_mlflow_server
    config = tracking_config(server.uri, tmp_path, "killed")
    save_config(config, config.run_dir / "config.yaml")
    tracker = MlflowTracker(config)
    step = 0

    def train_steps(count: int) -> None:
        nonlocal step
        for _ in range(count):
            step += 1
            tracker.log_metrics({"loss": 1.0 / step, "lr": 1e-3}, step)
            if step % 5 == 0:
                tracker.flush()  # must neither raise nor wait while the server is gone
            time.sleep(0.002)  # a training step's worth of time

    train_steps(100)
    server.kill()
    while not tracker.offline and step < 20_000:  # a flush notices a failed batch some retries later
        train_steps(5)
    assert tracker.offline
    train_steps(50)  # straight to the spool
    tracker.finish()
    assert capsys.readouterr().err.count(WARNING) == 1

    server.start()  # the same port and database
    assert main(["runs", "sync", str(config.run_dir)]) == 0  # the URI from the run's config.yaml
    client = MlflowClient(server.uri)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    for key in ("loss", "lr"):  # batches in flight at the kill are spooled too: stored once all the same
        assert steps_of(client, tracker.run_id, key) == list(range(1, step + 1))


def test_basic_auth_server_through_mlflow_credential_variables(mlflow_auth_server, tmp_path, monkeypatch):
    uri, user, password = mlflow_auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    config = tracking_config(uri, tmp_path)
    config_path = save_config(config, config.run_dir / "config.yaml")
    tracker = MlflowTracker(config)
    tracker.log_metrics({"loss": 1.5}, 1)
    tracker.log_artifact(config_path)
    tracker.finish()

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "train/loss")] == [1.5]
    recorded = json.dumps([run.data.params, run.data.tags])
    client.download_artifacts(tracker.run_id, "", str(tmp_path / "downloaded"))
    files = [path for path in (tmp_path / "downloaded").rglob("*") if path.is_file()]
    assert {path.name for path in files} == {"config.yaml", "loss_curve.png"}
    assert password not in recorded
    assert all(password.encode() not in path.read_bytes() for path in files)

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(TrackingError, match="401.*set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        MlflowTracker(tracking_config(uri, tmp_path, "wrong"))
    assert not (tmp_path / "runs" / "wrong" / SPOOL_DIR).exists()  # a refusal is not spooled


def test_credentials_in_the_tracking_uri_are_a_config_error():
    with pytest.raises(ConfigError, match="tracking.uri holds credentials") as caught:
        load_config(overrides=["tracking.uri=http://alice:s3cret@127.0.0.1:5000"])
    assert "MLFLOW_TRACKING_PASSWORD" in str(caught.value)
    assert "s3cret" not in str(caught.value)  # the error repeats no secret either


def test_git_state_is_unknown_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) == ("unknown", "unknown")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert git_state(PROJECT_ROOT)[0] == head.stdout.strip()


def test_spool_leaves_out_a_line_cut_short_by_a_crash(tmp_path):
    spool = Spool(tmp_path / SPOOL_DIR)
    spool.create({"experiment": "x", "name": "y", "start_time": 0, "tags": {}}, None, {"a": "1"})
    spool.add_status("RUNNING")
    with open(spool.events_path, "a") as f:
        f.write('{"kind": "metr')  # a crash in the middle of a write
    assert [event["kind"] for event in spool.events()] == ["params", "status"]
    spool.drop_torn_line()
    spool.add_status("FINISHED")
    assert [event["kind"] for event in spool.events()] == ["params", "status", "status"]
