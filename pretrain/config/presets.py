"""The configs that ship with pretrain: job configs (configs/*.yaml) and model presets (configs/model/*.yaml).

In a checkout they are the files under configs/; an installed package
carries the same files as package data (`pretrain.configs`, mapped from
configs/ in pyproject.toml), so `pretrain train --config demo` and
`model: {preset: llama-1b}` work outside a checkout too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from pretrain.errors import ConfigError


def shipped_configs_dir() -> Path:
    """The installed package's copy of configs/, or the checkout's own (an editable install has no copy)."""
    installed = importlib.util.find_spec("pretrain.configs")  # a folder of YAML files: a namespace package
    if installed is None or not installed.submodule_search_locations:
        return Path(__file__).resolve().parents[2] / "configs"
    return Path(next(iter(installed.submodule_search_locations)))


def shipped_config_names() -> list[str]:
    return sorted(path.stem for path in shipped_configs_dir().glob("*.yaml"))


def shipped_config(name: str) -> Path | None:
    """configs/NAME.yaml of the shipped configs, for `--config NAME`; None when there is none of that name."""
    path = shipped_configs_dir() / f"{name}.yaml"
    return path if "/" not in name and path.is_file() else None


def model_preset_names() -> list[str]:
    return sorted(path.stem for path in (shipped_configs_dir() / "model").glob("*.yaml"))


def model_preset_path(name: str) -> Path:
    """configs/model/NAME.yaml, or NAME itself when it is a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else shipped_configs_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model preset {name!r} does not exist; choose one of {', '.join(model_preset_names())}")
    return path


def read_model_preset(name: str) -> dict:
    path = model_preset_path(name)
    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML:\n{err}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: a model preset is a mapping of model settings (n_layer: 12, ...)")
    return settings
