"""The one source of truth for a job's settings: a typed schema, loaded from YAML.

    config = load_config("configs/demo.yaml", ["train.lr=3e-4", "model.n_layer=4"])

A YAML file may `extends:` another (a path relative to it, or a list of them);
later files and then the overrides win, key by key. Every problem (an unknown
key, a wrong type, values that do not fit together) is reported before any work
starts, in one ConfigError that names each key path, its value and what is
allowed. The DeepSpeed JSON is generated from this schema
(`pretrain.deepspeed_config`), never written by hand.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from data_pipeline.config import DataConfig
from launch.config import LaunchConfig
from model import GPTConfig
from pretrain.errors import ConfigError, PretrainError
from pretrain.hf_config import folder_model_config
from pretrain.presets import read_model_preset
from pretrain.secrets import redact

SQLITE = "sqlite:///"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(Section):
    seed: int = 1337
    max_steps: int = Field(1000, ge=1)
    seq_len: int = Field(256, ge=1, description="tokens per training sequence")
    micro_batch_size: int = Field(8, ge=1, description="sequences per rank per forward/backward")
    global_batch_size: int = Field(
        8, ge=1, description="sequences per optimizer step, all ranks: micro x grad-accumulation x data-parallel"
    )
    lr: float = Field(6e-4, gt=0, description="peak learning rate")
    min_lr: float = Field(6e-5, ge=0, description="learning rate at the end of the decay")
    warmup_steps: int = Field(100, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.1, ge=0, description="applied to weight matrices only")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables clipping")
    precision: Literal["fp32", "bf16", "bf16-autocast", "fp16"] = Field(
        "fp32",
        description="bf16: bf16 weights, fp32 masters in the optimizer; bf16-autocast: fp32 weights and optimizer, "
        "matrix products in bf16 (PyTorch autocast, as nanoGPT); fp16 adds dynamic loss scaling",
    )
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in backward")
    compile: bool | None = Field(
        None,
        description="torch.compile the model under the engine (DeepSpeed's engine.compile()); null: on CUDA GPUs "
        "only, since on CPUs compiling costs more than it saves in short runs",
    )
    loss_chunk_tokens: int = Field(
        4096,
        ge=0,
        description="compute the loss (and its gradients) this many tokens at a time, so the logits of the whole "
        "micro-batch (tokens x vocabulary) never exist at once; 0: all logits at once",
    )
    document_masking: bool = Field(
        False,
        description="packed sequences: positions restart at each document and attention stays inside it",
    )
    mixture: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="sample the dataset's sources by weight, e.g. {web: 0.7, code: 0.3}; empty: all sequences alike",
    )
    max_nonfinite_steps: int = Field(
        5,
        ge=1,
        description="consecutive steps with a non-finite loss or gradient norm (each skipped) before the run stops",
    )
    log_interval: int = Field(10, ge=1, description="steps between metric logs")
    eval_interval: int = Field(100, ge=1, description="steps between validation runs")
    eval_batches: int = Field(10, ge=1, description="micro-batches per rank in one validation run")
    sample_prompt: str = Field("The", description="prompt of the sample generated at the end")
    sample_tokens: int = Field(64, ge=1)
    eval_prompts: list[str] = Field(
        default_factory=list, description="prompts continued at every validation, logged to MLflow as text"
    )
    export_every: int = Field(
        0,
        ge=0,
        description="export every N steps (a multiple of checkpoint.every_steps) into <run folder>/exports/; 0: never",
    )
    export_register: str | None = Field(
        None, description="register each export of export_every as a new version of this MLflow model"
    )
    export_aliases: list[str] = Field(
        default_factory=list, description="aliases that move to each registered export, e.g. [candidate]"
    )
    init_from: str | None = Field(
        None,
        description="start from the weights of an exported folder (--format torch) or a Hugging Face GPT-2 or "
        "Llama folder, whose architecture replaces the model section (model.dropout is kept)",
    )


class ParallelConfig(Section):
    zero_stage: int = Field(
        1, ge=0, le=3, description="DeepSpeed ZeRO stage: 0 none, 1 optimizer state, 2 +gradients, 3 +parameters"
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="DeepSpeed AutoTP degree: ranks that split each layer's matrices"
    )
    offload_optimizer: bool = Field(
        False, description="ZeRO 1-3: keep optimizer state in CPU memory and step it there (saves 12 bytes/param)"
    )


class CheckpointConfig(Section):
    root: str = Field("outputs/runs", description="run folders are <root>/<tracking.run_name>")
    every_steps: int = Field(0, ge=0, description="save every N steps; 0 saves only at the end")
    keep_last: int = Field(2, ge=1, description="checkpoints kept in the run folder")


class TrackingConfig(Section):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI: sqlite:///file.db or http://host:port")
    experiment: str = "pretrain"
    run_name: str = "run"

    # A check of the raw section, not of the field: an error about a field repeats
    # its value, and this value would carry the password into the terminal and logs.
    @model_validator(mode="before")
    @classmethod
    def no_credentials_in_uri(cls, section: Any) -> Any:
        uri = section.get("uri") if isinstance(section, dict) else None
        if isinstance(uri, str) and urlsplit(uri).username is not None:
            raise ValueError(
                "tracking.uri holds credentials (user:password@host); the URI is logged with the run's "
                "parameters, so give it without them and set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD in the environment instead"
            )
        return section


class Config(Section):
    model: GPTConfig = Field(default_factory=GPTConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    @property
    def world_size(self) -> int:
        return self.launch.nnodes * self.launch.nproc_per_node

    @property
    def dp_size(self) -> int:
        return self.world_size // self.parallel.tensor_parallel_size

    @property
    def grad_accum_steps(self) -> int:
        return self.train.global_batch_size // (self.train.micro_batch_size * self.dp_size)

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoint.root) / self.tracking.run_name

    def to_dict(self) -> dict[str, Any]:
        """Every value, secrets included: for this process only, never to be written anywhere."""
        return self.model_dump(mode="json")

    def to_public_dict(self) -> dict[str, Any]:
        """What may be written, logged and printed: every value, secrets replaced (pretrain/secrets.py)."""
        return redact(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_public_dict(), sort_keys=False)


def consistency_problems(config: Config) -> list[str]:
    """Values that are each valid but do not fit together."""
    problems = []
    train, tp = config.train, config.parallel.tensor_parallel_size
    if config.world_size % tp:
        problems.append(
            f"parallel.tensor_parallel_size = {tp}: must divide the world size "
            f"(launch.nnodes x launch.nproc_per_node = {config.world_size})"
        )
    elif tp > 1:
        problems += tensor_parallel_problems(config)
    elif train.global_batch_size % (train.micro_batch_size * config.dp_size):
        problems.append(
            f"train.global_batch_size = {train.global_batch_size}: must be a multiple of "
            f"train.micro_batch_size ({train.micro_batch_size}) x data-parallel size ({config.dp_size})"
        )
    if config.parallel.offload_optimizer and config.parallel.zero_stage == 0:
        problems.append("parallel.offload_optimizer = true: needs parallel.zero_stage 1, 2 or 3")
    if train.seq_len > config.model.max_seq_len:
        problems.append(
            f"train.seq_len = {train.seq_len}: must not exceed model.max_seq_len ({config.model.max_seq_len})"
        )
    every = config.checkpoint.every_steps
    if train.export_every and (not every or train.export_every % every):
        problems.append(
            f"train.export_every = {train.export_every}: must be a multiple of checkpoint.every_steps ({every}), "
            f"since each export is made from a checkpoint"
        )
    if train.min_lr > train.lr:
        problems.append(f"train.min_lr = {train.min_lr}: must not exceed train.lr ({train.lr})")
    if train.warmup_steps > train.max_steps:
        problems.append(
            f"train.warmup_steps = {train.warmup_steps}: must not exceed train.max_steps ({train.max_steps})"
        )
    if config.data.tokenizer.path is None and config.model.vocab_size < config.data.tokenizer.vocab_size:
        problems.append(
            f"model.vocab_size = {config.model.vocab_size}: must be at least "
            f"data.tokenizer.vocab_size ({config.data.tokenizer.vocab_size})"
        )
    return problems


def tensor_parallel_problems(config: Config) -> list[str]:
    """AutoTP splits heads and hidden units evenly across the tensor-parallel ranks.

    With DeepSpeed 0.19.8, AutoTP training combines with ZeRO stages 0, 1, 2
    and 3 (each tested against a single process in tests/test_end_to_end.py);
    optimizer offload with tensor parallelism is not tested there, so it is refused.
    """
    tp, model, problems = config.parallel.tensor_parallel_size, config.model, []
    for name, count in [
        ("model.n_head", model.n_head),
        ("model.n_kv_heads", model.kv_heads),
        ("the FFN width", model.ffn_hidden),
    ]:
        if count % tp:
            problems.append(f"parallel.tensor_parallel_size = {tp}: must divide {name} ({count})")
    if config.parallel.offload_optimizer:
        problems.append(
            "parallel.offload_optimizer = true: not supported with tensor parallelism; "
            "set parallel.tensor_parallel_size=1 or parallel.offload_optimizer=false"
        )
    return problems


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a config file (defaults when None), apply `key.path=value` overrides, validate.

    `model: {preset: NAME}` (or the override `model.preset=NAME`) starts the
    model section from configs/model/NAME.yaml: the preset replaces the model
    settings inherited through `extends`, and model keys set beside it, in
    later files or as overrides, change it.
    """
    raw = _load_yaml(Path(path), seen=()) if path else {}
    # A preset override first: it replaces the model section, and the other model overrides apply on top.
    for override in sorted(overrides, key=lambda o: not o.startswith("model.preset=")):
        if override.startswith("model.preset="):
            raw["model"] = read_model_preset(override.partition("=")[2])
        else:
            _apply_override(raw, override)
    origin = f"{path or 'defaults'}" + (" with overrides" if overrides else "")
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"invalid config ({origin}):\n" + "\n".join(_describe(e) for e in err.errors())) from None
    if config.train.init_from:
        config = with_model_of_init_from(config)
    problems = consistency_problems(config)
    if problems:
        raise ConfigError(f"invalid config ({origin}):\n" + "\n".join(f"  {p}" for p in problems))
    return config


def with_model_of_init_from(config: Config) -> Config:
    """The config with the model section of train.init_from's folder: its weights fit no other architecture."""
    folder = config.train.init_from
    try:
        model = folder_model_config(Path(folder))
    except (PretrainError, ValueError, TypeError) as err:  # GPTConfig's own checks, or an unknown field
        raise ConfigError(f"train.init_from = {folder!r}: {err}") from None
    return config.model_copy(update={"model": dataclasses.replace(model, dropout=config.model.dropout)})


def save_config(config: Config, path: Path) -> Path:
    """Write the resolved config; atomically, since each host of a multi-node job writes the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(config.to_yaml())
    os.replace(temporary, path)
    return path


def with_absolute_paths(config: Config, base: Path) -> Config:
    """The config with its local paths made absolute against `base` (where it was submitted from).

    A job on a cluster starts in another folder (Ray uploads the project to a
    folder of its own; Slurm nodes may start elsewhere), where relative paths
    would point at nothing; absolute ones reach the shared file system.
    """

    def absolute(path: str) -> str:
        return path if "://" in path or Path(path).is_absolute() else str((base / path).resolve())

    raw = config.to_dict()
    raw["data"]["output_dir"] = absolute(raw["data"]["output_dir"])
    raw["checkpoint"]["root"] = absolute(raw["checkpoint"]["root"])
    raw["launch"]["jobs_dir"] = absolute(raw["launch"]["jobs_dir"])
    tokenizer, launch = raw["data"]["tokenizer"], raw["launch"]
    if tokenizer["path"]:
        tokenizer["path"] = absolute(tokenizer["path"])
    if raw["train"]["init_from"]:
        raw["train"]["init_from"] = absolute(raw["train"]["init_from"])
    if launch["hostfile"]:
        launch["hostfile"] = absolute(launch["hostfile"])
    for source in raw["data"]["sources"]:
        source["paths"] = [absolute(path) for path in source["paths"]]
    uri = raw["tracking"]["uri"]
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        raw["tracking"]["uri"] = SQLITE + absolute(uri.removeprefix(SQLITE))
    return Config.model_validate(raw)


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
        raise ConfigError(f"override {override!r}: write it as key.path=value, for example train.lr=3e-4")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    # Lists and mappings are parsed as YAML; scalars stay text and the schema
    # converts them, so `run_name=123` stays a name and `lr=3e-4` a float.
    try:
        parsed = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError as err:  # malformed, or a tag such as !!python/object that safe_load refuses
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise ConfigError(
            f"override {key}: its value is not valid YAML ({problem}); quote it to pass it as text, e.g. {key}='...'"
        ) from None
    node[leaf] = parsed if isinstance(parsed, (list, dict)) or parsed is None else text


def _describe(error: dict) -> str:
    path = ".".join(str(part) for part in error["loc"])
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = ", ".join(_allowed_keys(error["loc"][:-1]))
        return f"  {path}: unknown key; allowed here: {allowed}"
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
