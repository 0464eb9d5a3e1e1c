"""Exported folders in MLflow's model registry: logged to their training run, registered, fetched back.

    pretrain export --register gpt-tiny --alias candidate   # a new version of `gpt-tiny`, alias @candidate
    pretrain export --from-registry gpt-tiny@candidate --out model/

A version's source is the folder logged to the training run (artifacts
`export/<tag>/<format>-<dtype>/`), so the registry and the run it came from
point at the same files, and the version's tags say what it is: the step,
tokens seen, validation loss at that step, checkpoint, format and dtype.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from pretrain.errors import ExportError, TrackingError
from pretrain.tracking.base import RegisteredVersion
from pretrain.tracking.mlflow_tracker import REQUEST_ERRORS, configure_mlflow_client
from pretrain.weights.model_folder import check_replaceable

# MLflow reserves `latest` (any case): `NAME@latest` always names the newest version.
LATEST = "latest"
REFERENCE = re.compile(r"^(?P<name>[^@/]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")


def register(
    folder: Path, info: dict, name: str, aliases: list[str], tracking_uri: str, val_loss: float | None
) -> RegisteredVersion:
    """Log the exported folder to its training run and register it as a new version of `name`."""
    run_id = info.get("mlflow_run_id")
    if not run_id:
        raise ExportError(f"{info['run_dir']}: the checkpoint names no MLflow run to log the export to")
    configure_mlflow_client()
    client = MlflowClient(tracking_uri)
    artifact_path = f"export/{info['checkpoint_tag']}/{info['format']}-{info['dtype']}"
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
    try:
        client.log_artifacts(run_id, str(folder), artifact_path)
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags={k: str(v) for k, v in tags.items()}
        )
        for alias in aliases:
            if alias.lower() != LATEST:  # MLflow's own: the version just made is the latest already
                client.set_registered_model_alias(name, alias, version.version)
    except REQUEST_ERRORS as err:
        raise TrackingError(f"registering {name} at {tracking_uri} failed: {err}") from None
    return RegisteredVersion(name=name, version=version.version, source=version.source)


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
        Path(downloaded).rename(out_dir)
    except MlflowException as err:
        raise ExportError(f"--from-registry {reference}: {err.message} (at {tracking_uri})") from None
    except REQUEST_ERRORS as err:
        raise TrackingError(f"--from-registry {reference}: {tracking_uri} cannot be reached: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir, RegisteredVersion(name=version.name, version=version.version, source=version.source)


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
