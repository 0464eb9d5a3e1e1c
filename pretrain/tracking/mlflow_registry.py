"""Exported folders in MLflow's model registry: logged to their training run, registered, fetched back.

    pretrain export --register gpt-tiny --alias candidate   # a new version of `gpt-tiny`, alias @candidate
    pretrain export --from-registry gpt-tiny@candidate --out model/

The folder is logged as an MLflow logged model of its training run (MLflow 3's
Logged models, at the checkpoint's step), a pyfunc that generates text
(pretrain/tracking/mlflow_text_model.py), and the version is made from it, so
`mlflow.pyfunc.load_model("models:/NAME@ALIAS")` loads it and `predict`
continues prompts. The version's tags say what it is: the step, tokens seen,
validation loss at that step, checkpoint, format and dtype.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModel, LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from pretrain.errors import ExportError, TrackingError
from pretrain.tracking.base import RegisteredVersion
from pretrain.tracking.mlflow_tracker import REQUEST_ERRORS, configure_mlflow_client
from pretrain.weights.model_folder import check_replaceable

# MLflow reserves `latest` (any case): `NAME@latest` always names the newest version.
LATEST = "latest"
REFERENCE = re.compile(r"^(?P<name>[^@/]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")
# The logged model's code, saved with it and run by mlflow.pyfunc.load_model (not imported here).
TEXT_MODEL_CODE = Path(__file__).with_name("mlflow_text_model.py")
# The pyfunc's artifact: the exported folder, under this key (context.artifacts["model"]).
FOLDER_KEY = "model"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema(
        [
            ParamSpec("max_new_tokens", "long", 64),
            ParamSpec("temperature", "double", 0.8),
            ParamSpec("top_k", "long", 50),
            ParamSpec("top_p", "double", 1.0),
            ParamSpec("seed", "long", 0),
        ]
    ),
)
# Given, not inferred: MLflow would otherwise load the model in a new process to find out.
REQUIREMENTS = ("torch", "tokenizers", "safetensors", "mlflow", "pandas", "pretrain")


def register(
    folder: Path, info: dict, name: str, aliases: list[str], tracking_uri: str, val_loss: float | None
) -> RegisteredVersion:
    """Log the exported folder to its training run and register it as a new version of `name`."""
    run_id = info.get("mlflow_run_id")
    if not run_id:
        raise ExportError(f"{info['run_dir']}: the checkpoint names no MLflow run to log the export to")
    configure_mlflow_client()
    client = MlflowClient(tracking_uri)
    tags = {
        "step": info["step"],
        "tokens_seen": info["tokens_seen"],
        "checkpoint": info["checkpoint_tag"],
        "format": info["format"],
        "dtype": info["dtype"],
        "parameters": info["parameters"],
    }
    if val_loss is not None:
        tags["val_loss"] = f"{val_loss:.6f}"
    tags = {key: str(value) for key, value in tags.items()}
    try:
        logged = log_text_model(client, folder, run_id, f"{info['checkpoint_tag']}-{info['format']}", info, tags)
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name, logged.artifact_location, run_id=run_id, tags=tags, model_id=logged.model_id
        )
        for alias in aliases:
            if alias.lower() != LATEST:  # MLflow's own: the version just made is the latest already
                client.set_registered_model_alias(name, alias, version.version)
    except REQUEST_ERRORS as err:
        raise TrackingError(f"registering {name} at {tracking_uri} failed: {err}") from None
    return RegisteredVersion(name=name, version=version.version, source=version.source)


def log_text_model(client: MlflowClient, folder: Path, run_id: str, name: str, info: dict, tags: dict) -> LoggedModel:
    """Log `folder` as a logged model of run `run_id`: a pyfunc that generates text."""
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags)
    with tempfile.TemporaryDirectory(prefix="pretrain-model-") as scratch:
        local = Path(scratch) / "model"
        mlflow.pyfunc.save_model(
            str(local),
            python_model=str(TEXT_MODEL_CODE),
            artifacts={FOLDER_KEY: str(folder)},
            signature=SIGNATURE,
            pip_requirements=[requirement(package) for package in REQUIREMENTS],
        )
        client.log_model_artifacts(logged.model_id, str(local))
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, info["step"])])
    return client.finalize_logged_model(logged.model_id, "READY")


def requirement(package: str) -> str:
    """package==version, as installed here (a local build's label, such as +cpu, left out)."""
    try:
        return f"{package}=={importlib.metadata.version(package).split('+')[0]}"
    except importlib.metadata.PackageNotFoundError:
        return package


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="GPT exported by `pretrain export`")


def fetch(reference: str, out_dir: Path, tracking_uri: str) -> tuple[Path, RegisteredVersion]:
    """Download the folder of `NAME@ALIAS`, `NAME/VERSION` or `NAME` (its latest version) into `out_dir`."""
    check_replaceable(out_dir)
    configure_mlflow_client()
    client = MlflowClient(tracking_uri)
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.download")
    try:
        version = find_version(client, reference, tracking_uri)
        staging.mkdir(parents=True)
        downloaded = download_artifacts(artifact_uri=version.source, dst_path=str(staging), tracking_uri=tracking_uri)
        shutil.rmtree(out_dir, ignore_errors=True)
        exported_folder(Path(downloaded)).rename(out_dir)
    except MlflowException as err:
        raise ExportError(f"--from-registry {reference}: {err.message} (at {tracking_uri})") from None
    except REQUEST_ERRORS as err:
        raise TrackingError(f"--from-registry {reference}: {tracking_uri} cannot be reached: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir, RegisteredVersion(name=version.name, version=version.version, source=version.source)


def exported_folder(downloaded: Path) -> Path:
    """The exported folder in a downloaded version: the logged model's artifact, or (registered before
    versions were logged models) the download itself."""
    mlmodel = downloaded / "MLmodel"
    if not mlmodel.is_file():
        return downloaded
    artifacts = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]["artifacts"]
    return downloaded / artifacts[FOLDER_KEY]["path"]


def find_version(client: MlflowClient, reference: str, tracking_uri: str):
    """The model version that `NAME@ALIAS`, `NAME/VERSION` or `NAME` (the newest) names."""
    match = REFERENCE.match(reference)
    if not match:
        raise ExportError(f"--from-registry {reference!r}: write it as NAME@ALIAS, NAME/VERSION or NAME")
    name, alias, number = match["name"], match["alias"], match["version"]
    if number:
        return client.get_model_version(name, number)
    if alias and alias.lower() != LATEST:
        return client.get_model_version_by_alias(name, alias)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise ExportError(f"--from-registry {reference}: {name} has no versions at {tracking_uri}")
    return max(versions, key=lambda v: int(v.version))
