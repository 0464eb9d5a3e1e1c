"""Starting a job where its config says: this machine, one host of several, Slurm or Ray.

`pretrain train` runs this host's part of the job in the foreground (all of a
one-node job). `pretrain submit` describes the job (a JobSpec), hands it to the
target `launch.target` names (launch/targets.py: each target is one module of
launch/) and records what comes back for `pretrain jobs`; its `--stage data`
sends the data build instead.
Either way the job runs a resolved config written here (for the foreground
ranks a temporary file, for a submitted job `<launch.jobs_dir>/<job>.yaml`),
so every process, on every host, runs exactly what was validated here. The
run folder is its rank 0's to write, holding the folder's lock
(pretrain/layout.py): this command puts nothing there but a Slurm job's
script, beside the log Slurm writes.
"""

from __future__ import annotations

import datetime
import json
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.locks import FolderInUse, holder_if_locked
from launch import signals
from launch.jobs import JobRecord, save_record
from launch.local import NodeLayout, launcher_command, run_local
from launch.targets import FOREGROUND_ONLY, JobSpec, target
from pretrain.config import Config, save_config, with_absolute_paths
from pretrain.config.secrets import REDACTED, redact
from pretrain.errors import ConfigError, PretrainError
from pretrain.layout import CONFIG_NAME, JOB_LOG_NAME, SUMMARY_NAME, read_summary
from pretrain.train.preflight import check_job

CLI_MODULE = "pretrain.cli"
RESOLVED_PLACEHOLDER = "RESOLVED.yaml"  # a dry run's name for the config file a real start writes
RAY_TRAIN_MODULE = "pretrain.jobs.ray_train"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Submission:
    stage: str = "train"  # train | data
    require_checkpoint: bool = False
    node_rank: int = 0
    detach: bool = False
    dry_run: bool = False


def node_layout(config: Config, node_rank: int) -> NodeLayout:
    launch = config.launch
    if not 0 <= node_rank < launch.nnodes:
        raise ConfigError(
            f"--node-rank {node_rank}: must be 0 to {launch.nnodes - 1} (launch.nnodes = {launch.nnodes})"
        )
    return NodeLayout(
        nproc_per_node=launch.nproc_per_node,
        nnodes=launch.nnodes,
        node_rank=node_rank,
        rdzv_endpoint=launch.rdzv_endpoint,
        rdzv_id=config.tracking.run_name,
        hostfile=launch.hostfile,
        max_restarts=launch.max_restarts,
    )


def prepare_training(config: Config, require_checkpoint: bool, config_path: Path) -> list[str]:
    """Check the job, write its resolved config to `config_path`; the `pretrain` arguments every rank runs."""
    _, resume = check_job(config, require_checkpoint)
    if resume:
        print(f"continuing {config.run_dir} from its latest checkpoint", flush=True)
    save_config(config, config_path)
    return rank_arguments(str(config_path), resume)


def rank_arguments(config_path: str, resume: bool) -> list[str]:
    return ["train", "--config", config_path] + (["--resume"] if resume else [])


def print_command_here(config: Config, submission: Submission) -> int:
    """A dry run on this host: the checks `run_here` makes, then the command it would start, and nothing else."""
    layout = node_layout(config, submission.node_rank)
    _, resume = check_job(config, submission.require_checkpoint)
    rank_args = rank_arguments(RESOLVED_PLACEHOLDER, resume)
    print(shlex.join(launcher_command(layout, CLI_MODULE, rank_args, config.launch.launcher)))
    print(f"nothing started; {RESOLVED_PLACEHOLDER} is the resolved config (`pretrain config` prints it)")
    return 0


def check_run_folder_free(config: Config) -> None:
    """A second run of one run folder fails here at once, not after its ranks have started (they would find out)."""
    holder = holder_if_locked(config.run_dir)
    if holder:
        raise FolderInUse(
            f"{config.run_dir} is in use by {holder}; one run at a time may write it: wait for that one to end, "
            f"stop it, or choose another tracking.run_name"
        )


def run_here(config: Config, require_checkpoint: bool, node_rank: int = 0) -> int:
    """This host's ranks, in the foreground; SIGTERM and Ctrl-C reach them, and they save (launch/signals.py)."""
    stops = signals.watch()
    layout = node_layout(config, node_rank)
    if node_rank == 0:
        check_run_folder_free(config)
    with tempfile.TemporaryDirectory(prefix="pretrain-") as scratch:
        rank_args = prepare_training(config, require_checkpoint, Path(scratch) / CONFIG_NAME)
        if stops.stopped:
            print("stopped on request before the job started; nothing to save", flush=True)
            return stops.exit_code(0)
        process = run_local(layout, CLI_MODULE, rank_args, launcher=config.launch.launcher)
        returncode = stops.wait(process)
    if returncode != 0:
        raise PretrainError(f"the job failed (exit code {returncode}); the failing rank's error is printed above")
    if node_rank == 0:
        print_run_outputs(config)
    return stops.exit_code(0)


def print_run_outputs(config: Config) -> None:
    summary = read_summary(config.run_dir)
    if summary.get("steps") != config.train.max_steps:
        # Stopped by SIGTERM: the ranks saved a checkpoint and exited cleanly, so the job can be requeued.
        print(f"stopped before the end; run the same command again to continue (run folder {config.run_dir})")
        return
    print(f"final train loss {summary['train_loss']:.4f}, validation loss {summary['val_loss']:.4f}")
    print(f"run folder:  {config.run_dir.resolve()}")
    print(f"checkpoint:  {summary['checkpoint']}")
    if summary["mlflow_run_id"] is None:  # the server was down: everything waits in the run folder's spool
        print(f"MLflow run:  not sent yet; send it with: pretrain runs sync {config.run_dir}")
        return
    print(
        f"MLflow run:  {summary['mlflow_run_id']} in experiment {config.tracking.experiment!r} at {config.tracking.uri}"
    )


def submit(config: Config, submission: Submission) -> int:
    """Send the job to `launch.target`; print its id and how to follow it."""
    name = config.launch.target
    if name in ("local", "multinode") and not submission.detach:
        if submission.stage == "data":
            raise ConfigError("--stage data on this machine is `pretrain data build`; or add --detach")
        if submission.dry_run:
            return print_command_here(config, submission)
        return run_here(config, submission.require_checkpoint, submission.node_rank)
    if name in FOREGROUND_ONLY:
        raise ConfigError("--detach is for launch.target=local; a multinode job runs in the foreground on each host")
    target(name).check(config.launch)
    refuse_redacted(config.launch.ray.env_vars)
    # The job may start in another folder (Ray) or on another host (Slurm): paths must not depend on it.
    config = with_absolute_paths(config, Path.cwd())
    job = job_spec(config, submission)
    if name == "local" and submission.stage == "train" and not submission.dry_run:
        check_run_folder_free(config)  # elsewhere the lock is taken where the run runs: its rank 0 finds out
    result = target(name).submit(job, submission.dry_run)
    if not isinstance(result, JobRecord):  # a dry run: what would be submitted
        print(json.dumps(redact(result), indent=2) if isinstance(result, dict) else result, end="\n")
        return 0
    save_record(Path(config.launch.jobs_dir), result)
    print(f"submitted {name} job {result.job_id}")
    print(f"  follow it: pretrain jobs status {result.job_id} | pretrain jobs logs {result.job_id}")
    print(f"  stop it:   pretrain jobs cancel {result.job_id}")
    return 0


def job_spec(config: Config, submission: Submission) -> JobSpec:
    """The job as a target takes it: its resolved config (in the jobs folder) and the `pretrain` arguments it runs."""
    name = job_name(config, submission.stage)
    resolved = Path(config.launch.jobs_dir) / f"{name}.yaml"
    if submission.stage == "data":
        args = ["data", "build", "--config", str(save_config(config, resolved))]
    else:
        args = prepare_training(config, submission.require_checkpoint, resolved)
    train = submission.stage == "train"
    return JobSpec(
        name=name,
        stage=submission.stage,
        module=CLI_MODULE,
        args=args,
        config_path=resolved,
        launch=config.launch,
        run_name=config.tracking.run_name,
        run_dir=config.run_dir,
        tracking_uri=config.tracking.uri,
        experiment=config.tracking.experiment,
        project_root=PROJECT_ROOT,
        ray_train_module=RAY_TRAIN_MODULE,
        log_file=config.run_dir / JOB_LOG_NAME if train else Path(config.launch.jobs_dir) / f"{name}.log",
        finished_marker=config.run_dir / SUMMARY_NAME if train else None,
    )


def refuse_redacted(variables: dict[str, str]) -> None:
    """A config written by pretrain has its secrets redacted: submitting it again would pass the placeholder."""
    for name, value in variables.items():
        if value == REDACTED:
            raise ConfigError(
                f"launch.ray.env_vars.{name} is {REDACTED!r}: this config was written by pretrain, which removes "
                f"secrets; pass the value from your shell with launch.ray.pass_env=[{name}] or from a file with "
                f"launch.ray.env_file=PATH"
            )


def job_name(config: Config, stage: str) -> str:
    """The run name (or `data`) and the time: readable, and different for each submission."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{config.tracking.run_name if stage == 'train' else 'data'}-{stamp}"
