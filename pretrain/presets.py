"""Model presets: configs/model/NAME.yaml, each a whole model section (`model: {preset: NAME}`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pretrain.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


def model_preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def model_preset_path(name: str) -> Path:
    """configs/model/NAME.yaml, or NAME itself when it is a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS_DIR / f"{name}.yaml"
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
