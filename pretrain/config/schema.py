"""The schema of a job's settings: one typed section per concern (the checks across sections: consistency.py).

The model, data and launch sections are their own packages' schemas
(model.GPTConfig, data_pipeline.config, launch.config). Loading YAML with
`extends` and overrides is pretrain/config/loading.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

from data_pipeline.config import DataConfig
from launch.config import LaunchConfig
from model import GPTConfig
from pretrain.config.secrets import redact

SQLITE = "sqlite:///"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpikeConfig(Section):
    """What a loss spike does (pretrain/train/spikes.py)."""

    action: Literal["log", "skip", "rollback"] = Field(
        "log",
        description="log: logged as loss_spike and printed, at each log interval; skip: the spiking step's update "
        "is not applied; rollback: back to the last checkpoint, past the samples that led to the spike. skip and "
        "rollback read the loss every step",
    )
    factor: float = Field(3.0, gt=1, description="a loss above this many times the median of the recent ones")
    max_rollbacks: int = Field(3, ge=1, description="rollbacks before the run stops, naming the steps that spiked")


class Float8Config(Section):
    """FP8 matrix products in training, through torchao's float8 (pretrain/train/float8.py)."""

    enabled: bool = Field(
        False,
        description="the blocks' Linear layers multiply in float8 (weights and optimizer stay as train.precision "
        "says); on a device without FP8 (before Hopper and Ada, CPUs) torchao emulates it, correct but slow",
    )
    recipe: Literal["tensorwise", "rowwise"] = Field(
        "tensorwise", description="torchao's scaling: one scale per tensor (fastest) or per row (more accurate)"
    )
    layers: Literal["auto", "all"] = Field(
        "auto",
        description="auto: the Linear layers large enough to gain, by torchao's thresholds measured on H100; all: "
        "every Linear of the blocks (sizes multiples of 16). Never the embedding or the output head",
    )


class TrainConfig(Section):
    """What the loop trains on and how: steps, batches, precision, the data stream and where weights start."""

    seed: int = 1337
    max_steps: int = Field(1000, ge=1)
    seq_len: int = Field(256, ge=1, description="tokens per training sequence")
    micro_batch_size: int = Field(8, ge=1, description="sequences per rank per forward/backward")
    global_batch_size: int = Field(
        8, ge=1, description="sequences per optimizer step, all ranks: micro x grad-accumulation x data-parallel"
    )
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
    hang_timeout_s: float = Field(
        600,
        ge=0,
        description="stop the job, naming the stalled ranks and writing every rank's stack to <run>/hangs/, when "
        "no rank has made progress for this long; longer than the slowest checkpoint save or validation; 0: never",
    )
    straggler_factor: float = Field(
        1.5, gt=1, description="a rank this many times slower than the median rank at its own work is named"
    )
    straggler_intervals: int = Field(3, ge=1, description="log intervals in a row a rank is slow before it is named")
    spike: SpikeConfig = Field(default_factory=SpikeConfig)
    float8: Float8Config = Field(default_factory=Float8Config)
    init_from: str | None = Field(
        None,
        json_schema_extra={"path": True},
        description="start from the weights of an exported folder (--format torch), a Hugging Face GPT-2 or "
        "Llama folder, or a nanoGPT ckpt.pt, whose architecture replaces the model section (model.dropout is kept)",
    )


class OptimizerConfig(Section):
    """AdamW, and the clipping of the gradients it steps with."""

    lr: float = Field(6e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0, description="applied to weight matrices only")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables clipping")


class LRScheduleConfig(Section):
    """Linear warm-up to optimizer.lr, then a decay to min_lr at train.max_steps."""

    warmup_steps: int = Field(100, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr: float = Field(6e-5, ge=0, description="learning rate at the end of the decay")


class EvalConfig(Section):
    """Evaluation while training: the loss on the val split, downstream tasks, and prompts continued."""

    interval: int = Field(100, ge=1, description="steps between validation runs (and one at the last step)")
    batches: int | Literal["all"] = Field(
        10,
        description="micro-batches per rank (per source of train.mixture) in one validation run; all: every "
        "sequence of the val split",
    )
    tasks: list[str] = Field(
        default_factory=list,
        json_schema_extra={"path": True},
        description="downstream task files scored at every validation, JSON lines or lm-eval YAML "
        "(docs/evaluation.md); logged as eval/<task>/acc and eval/<task>/acc_norm",
    )
    prompts: list[str] = Field(
        default_factory=list, description="prompts continued at every validation, logged to MLflow as text"
    )

    @field_validator("batches", mode="before")
    @classmethod
    def batches_or_all(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, int | str) and str(value).isdigit() and int(value) >= 1):
            return value
        raise ValueError("must be a number of micro-batches (1 or more) or all")


class SampleConfig(Section):
    """The text generated at the end of training (and the length of eval.prompts' continuations)."""

    prompt: str = Field("The", description="prompt of the sample generated at the end")
    tokens: int = Field(64, ge=1, description="tokens generated for the sample and for each of eval.prompts")


class ExportConfig(Section):
    """Exports made while training (pretrain/export/periodic.py); `pretrain export` takes its own options."""

    every: int = Field(
        0,
        ge=0,
        description="export every N steps (a multiple of checkpoint.every_steps) into <run folder>/exports/; 0: never",
    )
    registered_model: str | None = Field(None, description="register each export as a new version of this MLflow model")
    aliases: list[str] = Field(
        default_factory=list, description="aliases that move to each registered export, e.g. [candidate]"
    )


# Settings that left `train` for a section of their own: a config that still
# names them is told the new key rather than that the key does not exist.
MOVED_KEYS = {
    **{f"train.{key}": f"optimizer.{key}" for key in OptimizerConfig.model_fields},
    **{f"train.{key}": f"lr_schedule.{key}" for key in LRScheduleConfig.model_fields},
    **{f"train.eval_{key}": f"eval.{key}" for key in EvalConfig.model_fields},
    **{f"train.sample_{key}": f"sample.{key}" for key in SampleConfig.model_fields},
    **{f"train.export_{key}": f"export.{key}" for key in ("every", "aliases")},
    "train.export_register": "export.registered_model",
}


def with_moved_keys(saved: dict) -> dict:
    """A config saved before settings left `train` (a checkpoint's, a run folder's), with them in their sections.

    What pretrain wrote itself is read as it was meant, so a run saved by an
    earlier version still exports, generates and resumes; a config a user
    writes now is told the new key instead (pretrain/config/loading.py).
    """
    train = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(train, dict) or not any(f"train.{key}" in MOVED_KEYS for key in train):
        return saved  # written since the split, or not a config at all: validation says what is wrong
    migrated = {**saved, "train": {}}
    for key, value in train.items():
        section, _, name = MOVED_KEYS.get(f"train.{key}", f"train.{key}").partition(".")
        migrated[section] = {**migrated.get(section, {}), name: value}
    return migrated


class ParallelConfig(Section):
    zero_stage: int = Field(
        1, ge=0, le=3, description="DeepSpeed ZeRO stage: 0 none, 1 optimizer state, 2 +gradients, 3 +parameters"
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="DeepSpeed AutoTP degree: ranks that split each layer's matrices"
    )
    sequence_parallel_size: int = Field(
        1,
        ge=1,
        description="Ulysses sequence parallelism: consecutive ranks that split each sequence (docs/parallelism.md)",
    )
    offload_optimizer: bool = Field(
        False, description="ZeRO 1-3: keep optimizer state in CPU memory and step it there (saves 12 bytes/param)"
    )


class CheckpointConfig(Section):
    root: str = Field(
        "outputs/runs", description="run folders are <root>/<tracking.run_name>", json_schema_extra={"path": True}
    )
    every_steps: int = Field(0, ge=0, description="save every N steps; 0 saves only at the end")
    keep_last: int = Field(2, ge=1, description="checkpoints kept in the run folder")


class TrackingConfig(Section):
    backend: Literal["mlflow"] = Field("mlflow", description="where runs are tracked (pretrain/tracking/): mlflow")
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI: sqlite:///file.db or http://host:port")
    experiment: str = "pretrain"
    run_name: str = "run"
    description: str = Field(
        "", description="the run's one-line note in MLflow (mlflow.note.content); empty: the model, data and steps"
    )

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
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    @property
    def world_size(self) -> int:
        return self.launch.nnodes * self.launch.nproc_per_node

    @property
    def ranks_per_batch(self) -> int:
        """The ranks of one tensor- or sequence-parallel group: consecutive (DeepSpeed's layout), reading the same."""
        return self.parallel.tensor_parallel_size * self.parallel.sequence_parallel_size

    @property
    def dp_size(self) -> int:
        """Ranks that read different sequences."""
        return self.world_size // self.ranks_per_batch

    def dp_rank(self, rank: int) -> int:
        """Which data-parallel rank global rank `rank` is."""
        return rank // self.ranks_per_batch

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
        """What may be written, logged and printed: every value, secrets replaced (pretrain/config/secrets.py)."""
        return redact(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_public_dict(), sort_keys=False)
