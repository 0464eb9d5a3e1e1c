"""Loading a config: YAML files that `extends:` others, presets, dotted overrides, the environment.

    config = load_config("configs/demo.yaml", ["optimizer.lr=3e-4", "model.n_layer=4"])

A YAML file may `extends:` another (a path relative to it, or a list of them);
later files and then the overrides win, key by key. Every problem (an unknown
key, a wrong type, values that do not fit together) is reported before any work
starts, in one ConfigError that names each key path, its value and what is
allowed. The DeepSpeed JSON is generated from the schema
(`pretrain.train.deepspeed_config`), never written by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from model.config import GPTConfig, RopeScaling
from pretrain.config.consistency import consistency_problems
from pretrain.config.presets import read_model_preset, shipped_config, shipped_config_names
from pretrain.config.schema import MOVED_KEYS, Config
from pretrain.errors import ConfigError, PretrainError
from pretrain.layout import write_atomically
from pretrain.weights.hf_config import folder_model_config

SQLITE = "sqlite:///"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
FROM_ENVIRONMENT = f"the environment ({TRACKING_URI_VARIABLE})"
DEFAULT_URI_ORIGIN = f"the default (neither the config nor {TRACKING_URI_VARIABLE} sets it)"
NULLS = ("null", "Null", "NULL", "~")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a config file (defaults when None), apply `key.path=value` overrides, validate.

    `model: {preset: NAME}` (or the override `model.preset=NAME`) starts the
    model section from configs/model/NAME.yaml: the preset replaces the model
    settings inherited through `extends`, and model keys set beside it, in
    later files or as overrides, change it.
    """
    raw = _load_yaml(_config_file(path), seen=()) if path else {}
    # A preset override first: it replaces the model section, and the other model overrides apply on top.
    for override in sorted(overrides, key=lambda o: not o.startswith("model.preset=")):
        if override.startswith("model.preset="):
            raw["model"] = read_model_preset(override.partition("=")[2])
        else:
            _apply_override(raw, override)
    if _uri_origin(raw, path, overrides) == FROM_ENVIRONMENT and isinstance(raw.get("tracking", {}), dict):
        raw["tracking"] = {**raw.get("tracking", {}), "uri": os.environ[TRACKING_URI_VARIABLE]}
    origin = f"{path or 'defaults'}" + (" with overrides" if overrides else "")
    extension = _context_extension(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"invalid config ({origin}):\n" + "\n".join(_describe(e) for e in err.errors())) from None
    if config.train.init_from:
        config = with_model_of_init_from(config, extension)
    problems = consistency_problems(config)
    if problems:
        raise ConfigError(f"invalid config ({origin}):\n" + "\n".join(f"  {p}" for p in problems))
    return config


def tracking_uri_origin(path: str | Path | None = None, overrides: list[str] = ()) -> str:
    """Where the tracking.uri of `load_config(path, overrides)` comes from, in words (for `pretrain config`)."""
    return _uri_origin(_load_yaml(_config_file(path), seen=()) if path else {}, path, overrides)


def tracking_uri_chosen(path: str | Path | None = None, overrides: list[str] = ()) -> bool:
    """Whether a config file, an override or MLFLOW_TRACKING_URI sets tracking.uri (else it is the default)."""
    return tracking_uri_origin(path, overrides) != DEFAULT_URI_ORIGIN


def _uri_origin(raw: dict, path: str | Path | None, overrides: list[str]) -> str:
    """MLFLOW_TRACKING_URI fills in tracking.uri when no file or override sets it.

    As in MLflow's own tools, the variable names the store of everything run
    from this shell; a config or an override that names one is more specific, and wins.
    """
    if any(override.startswith("tracking.uri=") for override in overrides):
        return "an override (tracking.uri=...)"
    tracking = raw.get("tracking")
    if isinstance(tracking, dict) and "uri" in tracking:
        return f"the config ({path})"
    if os.environ.get(TRACKING_URI_VARIABLE):
        return FROM_ENVIRONMENT
    return DEFAULT_URI_ORIGIN


def _context_extension(raw: dict) -> dict | None:
    """With train.init_from, `model.rope_scaling` applies to the folder's model, not to the config's own model
    section (which the folder's replaces): taken out before that section is checked."""
    train, model = raw.get("train"), raw.get("model")
    if isinstance(train, dict) and train.get("init_from") and isinstance(model, dict):
        return model.pop("rope_scaling", None)
    return None


def with_model_of_init_from(config: Config, rope_scaling: dict | None = None) -> Config:
    """The config with the model section of train.init_from's folder: its weights fit no other architecture.

    Two settings of how it reads are the config's: `model.dropout`, and
    `model.rope_scaling`, which extends the folder's context (`extended_context`).
    """
    folder = config.train.init_from
    try:
        if Path(folder).is_file():  # a nanoGPT ckpt.pt (reading it needs torch: imported only for one)
            from pretrain.weights.nanogpt import nanogpt_model_config

            model = nanogpt_model_config(Path(folder))
        else:
            model = folder_model_config(Path(folder))
    except (PretrainError, ValueError, TypeError) as err:  # GPTConfig's own checks, or an unknown field
        raise ConfigError(f"train.init_from = {folder!r}: {err}") from None
    model = dataclasses.replace(model, dropout=config.model.dropout)
    if rope_scaling is not None:
        try:
            model = extended_context(model, rope_scaling)
        except ValidationError as err:  # a ValueError too: first
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"model.rope_scaling = {rope_scaling!r}: {problems}") from None
        except ValueError as err:
            raise ConfigError(
                f"model.rope_scaling = {rope_scaling!r} with train.init_from = {folder!r}: {err}"
            ) from None
    return config.model_copy(update={"model": model})


def extended_context(model: GPTConfig, rope_scaling: dict) -> GPTConfig:
    """`model` reading `factor` times the context it was trained at, its rotary positions stretched as
    `rope_scaling` says (model/positions.py): continued pretraining at a longer sequence.

    The trained context is the folder's `max_seq_len` (its `original_max_seq_len` if it was extended
    before), so `original_max_seq_len` may be left out; `max_seq_len` becomes factor times it.
    """
    if model.pos_encoding != "rope":
        raise ValueError(f"only rotary positions stretch; the folder's model has {model.pos_encoding} positions")
    unknown = sorted(set(rope_scaling) - {field.name for field in dataclasses.fields(RopeScaling)})
    if unknown:
        known = ", ".join(field.name for field in dataclasses.fields(RopeScaling))
        raise ValueError(f"no setting {unknown[0]!r}; rope_scaling's settings are {known}")
    before = model.rope_scaling
    trained = before.original_max_seq_len or round(model.max_seq_len / before.factor) if before else model.max_seq_len
    # Checked and converted (overrides are text) as the schema checks the rest of the config.
    scaling = TypeAdapter(RopeScaling).validate_python({"original_max_seq_len": trained, **rope_scaling})
    return dataclasses.replace(
        model, rope_scaling=scaling, max_seq_len=int(scaling.original_max_seq_len * scaling.factor)
    )


def save_config(config: Config, path: Path) -> Path:
    """Write the resolved config, secrets redacted; atomically, since each host of a multi-node job writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, config.to_yaml())


def with_absolute_paths(config: Config, base: Path) -> Config:
    """The config with its local paths made absolute against `base` (where it was submitted from).

    A job on a cluster starts in another folder (Ray uploads the project to a
    folder of its own; Slurm nodes may start elsewhere), where relative paths
    would point at nothing; absolute ones reach the shared file system. The
    paths are the fields whose schema marks them `json_schema_extra={"path": True}`,
    in any section, so a new path field is made absolute without a change here.
    """

    def absolute(path: str) -> str:
        return path if "://" in path or Path(path).is_absolute() else str((base / path).resolve())

    raw = _with_absolute_paths(Config, config.to_dict(), absolute)
    uri = raw["tracking"]["uri"]
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        raw["tracking"]["uri"] = SQLITE + absolute(uri.removeprefix(SQLITE))
    return Config.model_validate(raw)


def _with_absolute_paths(schema: type[BaseModel], raw: dict, absolute) -> dict:
    for name, field in schema.model_fields.items():
        value, inner = raw.get(name), _model_of(field.annotation)
        if value is None:
            continue
        if inner is not None:
            raw[name] = (
                [_with_absolute_paths(inner, item, absolute) for item in value]
                if isinstance(value, list)
                else _with_absolute_paths(inner, value, absolute)
            )
        elif (field.json_schema_extra or {}).get("path"):
            raw[name] = [absolute(item) for item in value] if isinstance(value, list) else absolute(value)
    return raw


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, itself or as the items of a list; None for any other field."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _config_file(path: str | Path) -> Path:
    """`--config FILE`, or `--config NAME` for a config that ships with pretrain (configs/NAME.yaml)."""
    if Path(path).is_file():
        return Path(path)
    shipped = shipped_config(str(path))
    if shipped is None:
        raise ConfigError(
            f"{path}: config file not found; give a YAML file, or the name of a shipped config: "
            f"{', '.join(shipped_config_names())}"
        )
    return shipped


def _load_yaml(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to this file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML:\n{err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
    parents = raw.pop("extends", [])
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        _deep_merge(merged, _load_yaml(path.parent / parent, seen + (path.resolve(),)))
    model = raw.get("model")
    if isinstance(model, dict) and "preset" in model:
        # A preset is a whole model: the model settings inherited so far do not mix into it.
        merged.pop("model", None)
        raw["model"] = {**read_model_preset(str(model.pop("preset"))), **model}
    return _deep_merge(merged, raw)


def _deep_merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: write it as key.path=value, for example optimizer.lr=3e-4")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = _override_value(key, text)


def _override_value(key: str, text: str) -> Any:
    """The value of `key=text`, by what the schema expects at `key` (the rule --help states).

    A text setting takes the text as it is (`sample.prompt=ROMEO:`);
    quotes around it are removed (`'sample.prompt=" ROMEO:"'` keeps the
    space). Lists and mappings are parsed as YAML; other scalars stay text and
    the schema converts them, so `run_name=123` stays a name and `lr=3e-4` a float.
    `null` unsets an optional setting.
    """
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    if _expects_text(key.split(".")) and not quoted and text not in NULLS:
        return text
    # Parsed with safe_load only: a tag such as !!python/object is refused, never run.
    try:
        parsed = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError as err:
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise ConfigError(
            f"override {key}: its value is not valid YAML ({problem}); quote it to pass it as text, e.g. {key}='...'"
        ) from None
    if quoted and isinstance(parsed, str):
        return parsed
    return parsed if isinstance(parsed, (list, dict)) or parsed is None else text


def _expects_text(path: list[str]) -> bool:
    """Whether the setting at `path` is text: a str, an optional one, or a choice of strings."""
    try:
        annotation = _annotation(path)
    except (KeyError, AttributeError, IndexError, TypeError):  # not a key of the schema: validation names it
        return False
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return all(isinstance(value, str) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        return bool(options) and all(option is str for option in options)
    return annotation is str


def _annotation(path: list[str]) -> Any:
    schema: Any = Config
    for part in path:
        if dataclasses.is_dataclass(schema):
            schema = typing.get_type_hints(schema)[part]
        else:
            schema = schema.model_fields[part].annotation
    return schema


def _describe(error: dict) -> str:
    path = ".".join(str(part) for part in error["loc"])
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        if path in MOVED_KEYS:
            return f"  {path}: this setting is now {MOVED_KEYS[path]}; rename it"
        allowed = _allowed_keys(error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        parent = ".".join(str(part) for part in error["loc"][:-1])
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
        return f"  {path}: unknown key; {hint}allowed here: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and isinstance(error["input"], dict):
        # A check across a whole section (the message names the keys): the section is not worth printing.
        return f"  {path or '(top level)'}: {message}"
    return f"  {path} = {error['input']!r}: {message}"


def _allowed_keys(loc: tuple) -> list[str]:
    schema: Any = Config
    for part in loc:
        if isinstance(part, int):  # an item of a list: the list's item type
            schema = typing.get_args(schema)[0]
        else:
            schema = schema.model_fields[part].annotation
    if dataclasses.is_dataclass(schema):
        return [f.name for f in dataclasses.fields(schema)]
    return list(schema.model_fields)
