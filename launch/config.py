"""Where and how a job runs: the `launch` section of the config.

    launch:
      target: slurm            # local | multinode | slurm | ray
      nnodes: 2
      nproc_per_node: 8
      slurm: {partition: gpu, time: "12:00:00", gpus_per_node: 8}

The schema lives beside the code that reads it, as data_pipeline/config.py
does for the data section; pretrain/config/schema.py composes the sections.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from launch.targets import TARGET_NAMES

# DeepSpeed's launcher reads a hostfile; torchrun needs an endpoint every host can reach.
ENDPOINT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlurmConfig(Section):
    """What the generated sbatch script asks Slurm for; see docs/launching.md for the script itself."""

    partition: str | None = Field(None, description="#SBATCH --partition (default: the cluster's default)")
    account: str | None = Field(None, description="#SBATCH --account")
    time: str = Field("01:00:00", description="#SBATCH --time: the job's time limit, [days-]hours:minutes:seconds")
    cpus_per_node: int | None = Field(None, ge=1, description="CPU cores for the node's task (--cpus-per-task)")
    gpus_per_node: int = Field(0, ge=0, description="#SBATCH --gpus-per-node; usually launch.nproc_per_node")
    mem: str | None = Field(None, description="#SBATCH --mem per node, e.g. 64G; 0 asks for all of it")
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines run before training on the nodes, e.g. `module load cuda` or `source .venv/bin/activate`",
    )
    extra_sbatch: list[str] = Field(
        default_factory=list, description="more #SBATCH options, e.g. --qos=high or --exclusive"
    )
    signal_seconds: int = Field(
        120, ge=0, description="SIGTERM this long before the time limit, so the ranks save a checkpoint; 0: no signal"
    )
    requeue: bool = Field(True, description="put the job back in the queue when it is preempted or stopped early")
    rdzv_port: int = Field(29500, ge=1, le=65535, description="torchrun's rendezvous port on the first node")
    python: str | None = Field(
        None, description="the Python that runs `pretrain` on the nodes (default: the one that submits)"
    )

    @field_validator("extra_sbatch")
    @classmethod
    def _options(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if not line.startswith("-"):
                raise ValueError(f"{line!r} is not an sbatch option; write it as it follows #SBATCH, e.g. --qos=high")
        return lines


class RayConfig(Section):
    """A job on a Ray cluster, submitted through the Ray Jobs API; see docs/launching.md."""

    address: str | None = Field(
        None, description="the cluster's Jobs API, http://HEAD:8265 (default: the RAY_ADDRESS environment variable)"
    )
    cpus_per_worker: float = Field(1, gt=0, description="CPU cores Ray reserves for each training rank")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs Ray reserves for each training rank")
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables of the job; secrets belong in pass_env or env_file (a value whose name "
        "looks secret is redacted wherever the config is written)",
    )
    pass_env: list[str] = Field(
        default_factory=list,
        description="names of variables the job gets from the submitting shell's environment, e.g. "
        "[MLFLOW_TRACKING_PASSWORD]; their values are never written anywhere",
    )
    env_file: str | None = Field(
        None,
        json_schema_extra={"path": True},
        description="a file of KEY=VALUE lines (dotenv) the job's environment is read from at submission",
    )
    excludes: list[str] = Field(
        default_factory=lambda: [".venv", ".git", "outputs", "*.db", "mlruns", "__pycache__", ".pytest_cache"],
        description="paths of the project folder not uploaded as the job's working directory",
    )


class LaunchConfig(Section):
    target: str = Field(
        "local",
        description="local: this machine; multinode: this host's part of a job over several hosts; "
        "slurm: an sbatch job; ray: a Ray cluster's Jobs API",
    )

    launcher: Literal["torchrun", "deepspeed"] = Field(
        "torchrun", description="what starts the ranks on a host: torchrun, or DeepSpeed's `deepspeed` launcher"
    )
    nnodes: int = Field(1, ge=1, description="hosts (nodes) in the job")
    nproc_per_node: int = Field(1, ge=1, description="processes (ranks) per node")
    max_restarts: int = Field(
        0,
        ge=0,
        description="when a rank fails (dies, or stops a hung job), restart every rank from the last complete "
        "checkpoint, at most this many times: torchrun's --max-restarts, Ray Train's FailureConfig(max_failures); "
        "a few on a cluster, 0 on a workstation, where a failure is usually a bug to see at once",
    )
    rdzv_endpoint: str | None = Field(
        None, description="multinode with torchrun: HOST:PORT on the node-rank-0 host, reachable from every host"
    )
    hostfile: str | None = Field(
        None,
        json_schema_extra={"path": True},
        description="multinode with the deepspeed launcher: its hostfile (`host slots=N` lines; needs ssh)",
    )
    jobs_dir: str = Field(
        "outputs/jobs",
        description="where submitted jobs are recorded, for `pretrain jobs`",
        json_schema_extra={"path": True},
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("target")
    @classmethod
    def _a_known_target(cls, value: str) -> str:
        if value not in TARGET_NAMES:
            raise ValueError(f"no such launch target; choose one of {', '.join(TARGET_NAMES)} (launch/targets.py)")
        return value

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not ENDPOINT.match(endpoint):
            raise ValueError("write it as HOST:PORT, e.g. 10.0.0.1:29500")
        return endpoint

    @model_validator(mode="after")
    def _nodes_fit_the_target(self) -> LaunchConfig:
        if self.target == "local" and self.nnodes > 1:
            raise ValueError(
                f"launch.nnodes = {self.nnodes} with launch.target = local: one machine is one node; "
                "set launch.target to multinode, slurm or ray, or launch.nnodes=1"
            )
        if self.target == "multinode" and self.nnodes > 1:
            if self.launcher == "torchrun" and self.rdzv_endpoint is None:
                raise ValueError(
                    "launch.target = multinode with torchrun needs launch.rdzv_endpoint=HOST:PORT "
                    "(on the node-rank-0 host); or use launch.launcher=deepspeed with launch.hostfile"
                )
            if self.launcher == "deepspeed" and self.hostfile is None:
                raise ValueError("launch.launcher = deepspeed over several nodes needs launch.hostfile")
        return self
