"""Secrets kept out of everything a run writes: the config as it is logged, saved and printed.

A config value whose key looks like a secret (a word of it is password,
token, secret, key, credential...; or a name MLflow, Ray, Hugging Face or a
cloud uses for one) is replaced by `<redacted>` wherever the config is
written: MLflow parameters and artifacts, the run folder's config.yaml,
checkpoints and their markers, the data manifest, job files and
`pretrain config`. So is the password in a URL (`https://user:pw@host`).
The process keeps the real values in memory: a Ray job still gets the
variables of `launch.ray.env_vars` it was given.

Secrets are meant to come from the submitting shell's environment or from a
file (`launch.ray.pass_env`, `launch.ray.env_file`), never from the config;
this is the net under that rule.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"
SECRET_WORDS = {"password", "passwd", "passphrase", "token", "secret", "key", "apikey", "credential", "credentials"}
KNOWN_SECRETS = {
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "RAY_AUTH_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "WANDB_API_KEY",
    "DATABRICKS_TOKEN",
}
# Words of a key: split at anything not a letter or digit, and where camelCase starts a word.
WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_key(key: str) -> bool:
    """MLFLOW_TRACKING_PASSWORD, hf_token, apiKey: yes. sample_tokens, tokenizer, keep_last: no."""
    if key.upper() in KNOWN_SECRETS:
        return True
    return any(word.lower() in SECRET_WORDS for word in WORD.findall(key))


def redact(tree: Any) -> Any:
    """A copy of a config tree (dicts, lists, scalars) with its secrets replaced by `<redacted>`."""
    if isinstance(tree, dict):
        return {
            key: REDACTED if is_secret_key(str(key)) and value not in (None, "") else redact(value)
            for key, value in tree.items()
        }
    if isinstance(tree, list):
        return [redact(item) for item in tree]
    if isinstance(tree, str) and "@" in tree and "://" in tree:
        return redact_url(tree)
    return tree


def redact_url(text: str) -> str:
    """The URL with the password of its user part replaced; other text as it is."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password is None:
        return text
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}"))
