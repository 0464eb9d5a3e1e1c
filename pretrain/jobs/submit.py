"""Starting a job where its config says: this machine, one host of several, Slurm or Ray.

`pretrain train` runs this host's part of the job in the foreground (all of a
one-node job). `pretrain submit` sends the job to `launch.target` and records
it for `pretrain jobs`; its `--stage data` sends the data build instead.
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
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.locks import FolderInUse, holder_if_locked
from launch import detached, signals
from launch.jobs import JobRecord, save_record
from launch.local import NodeLayout, launcher_command, rank_environment, run_local
from pretrain.config import Config, save_config, with_absolute_paths
from pretrain.config.secrets import REDACTED, redact
from pretrain.errors import ConfigError, PretrainError
from pretrain.layout import CONFIG_NAME, JOB_ID_VARIABLE, JOB_LOG_NAME, SUMMARY_NAME, read_summary
from pretrain.train.preflight import check_job

CLI_MODULE = "pretrain.cli"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


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
    )


def prepare_training(config: Config, require_checkpoint: bool, config_path: Path) -> list[str]:
    """Check the job, write its resolved config to `config_path`; the `pretrain` arguments every rank runs."""
    _, resume = check_job(config, require_checkpoint)
    if resume:
        print(f"continuing {config.run_dir} from its latest checkpoint", flush=True)
    save_config(config, config_path)
    return ["train", "--config", str(config_path)] + (["--resume"] if resume else [])


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
    target = config.launch.target
    if target in ("local", "multinode") and not submission.detach:
        if submission.stage == "data":
            raise ConfigError("--stage data on this machine is `pretrain data build`; or add --detach")
        return run_here(config, submission.require_checkpoint, submission.node_rank)
    if target == "multinode":
        raise ConfigError("--detach is for launch.target=local; a multinode job runs in the foreground on each host")
    # The job may start in another folder (Ray) or on another host (Slurm): paths must not depend on it.
    config = with_absolute_paths(config, Path.cwd())
    record = {"local": submit_detached, "slurm": submit_slurm, "ray": submit_ray}[target](config, submission)
    if record is None:  # a dry run
        return 0
    save_record(Path(config.launch.jobs_dir), record)
    print(f"submitted {target} job {record.job_id}")
    print(f"  follow it: pretrain jobs status {record.job_id} | pretrain jobs logs {record.job_id}")
    print(f"  stop it:   pretrain jobs cancel {record.job_id}")
    return 0


def refuse_redacted(variables: dict[str, str]) -> None:
    """A config written by pretrain has its secrets redacted: submitting it again would pass the placeholder."""
    for name, value in variables.items():
        if value == REDACTED:
            raise ConfigError(
                f"launch.ray.env_vars.{name} is {REDACTED!r}: this config was written by pretrain, which removes "
                f"secrets; pass the value from your shell with launch.ray.pass_env=[{name}] or from a file with "
                f"launch.ray.env_file=PATH"
            )


def new_record(config: Config, target: str, stage: str, job_id: str, config_path: Path, **fields) -> JobRecord:
    return JobRecord(
        target=target,
        job_id=job_id,
        run_name=config.tracking.run_name,
        run_dir=str(config.run_dir),
        config=str(config_path),
        tracking_uri=config.tracking.uri,
        experiment=config.tracking.experiment,
        stage=stage,
        **fields,
    )


def job_name(config: Config, stage: str) -> str:
    """The run name (or `data`) and the time: readable, and different for each submission."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{config.tracking.run_name if stage == 'train' else 'data'}-{stamp}"


def stage_command(config: Config, submission: Submission, name: str) -> tuple[Path, list[str]]:
    """The resolved config (in the jobs folder) and the `pretrain` arguments of a data build, or of every rank."""
    resolved = Path(config.launch.jobs_dir) / f"{name}.yaml"
    if submission.stage == "data":
        return save_config(config, resolved), ["data", "build", "--config", str(resolved)]
    return resolved, prepare_training(config, submission.require_checkpoint, resolved)


def submit_detached(config: Config, submission: Submission) -> JobRecord:
    """This machine's ranks, under a supervisor that outlives this command (launch/detached.py)."""
    job_id = job_name(config, submission.stage)
    if submission.stage == "train":
        check_run_folder_free(config)
    config_path, args = stage_command(config, submission, job_id)
    if submission.stage == "train":
        command = launcher_command(node_layout(config, 0), CLI_MODULE, args, config.launch.launcher)
        log_file = config.run_dir / JOB_LOG_NAME
    else:
        command = [sys.executable, "-m", CLI_MODULE, *args]
        log_file = Path(config.launch.jobs_dir) / f"{job_id}.log"
    exit_file = log_file.with_name(f".{job_id}.exit")
    env = rank_environment(config.launch.nproc_per_node) | {JOB_ID_VARIABLE: f"local:{job_id}"}
    process = detached.start(command, env, log_file, exit_file, ranks=submission.stage == "train")
    print(f"started {config.launch.nproc_per_node} rank(s) under process {process.pid}; log: {log_file}")
    return new_record(
        config,
        "local",
        submission.stage,
        job_id,
        config_path,
        log=str(log_file),
        details={"pid": process.pid, "create_time": process.create_time(), "exit_file": str(exit_file)},
    )


def submit_slurm(config: Config, submission: Submission) -> JobRecord | None:
    """An sbatch script for the job (launch/slurm.py), written beside its outputs and submitted."""
    from launch import slurm

    settings, train, name = config.launch.slurm, submission.stage == "train", job_name(config, submission.stage)
    config_path, args = stage_command(config, submission, name)
    python = settings.python or sys.executable
    node_command = ["exec", shlex.quote(python), "-m", CLI_MODULE, *map(shlex.quote, args)]
    if train and config.launch.nnodes > 1:
        node_command += ['--node-rank="$SLURM_NODEID"', 'launch.rdzv_endpoint="$PRETRAIN_RDZV_ENDPOINT"']
    folder = config.run_dir if train else Path(config.launch.jobs_dir)
    job = slurm.SlurmJob(
        name=f"pretrain-{name}",
        workdir=Path.cwd(),
        nnodes=config.launch.nnodes if train else 1,
        log_file=str(folder / "slurm-%j.out"),
        node_command=node_command,
        finished_marker=config.run_dir / SUMMARY_NAME if train else None,
    )
    script = slurm.render_script(settings, job)
    if submission.dry_run:
        print(script, end="")
        return None
    slurm.check_partition(settings)
    folder.mkdir(parents=True, exist_ok=True)
    script_path = folder / f"{name}.sbatch"
    script_path.write_text(script)
    job_id = slurm.submit(script_path)
    return new_record(
        config, "slurm", submission.stage, job_id, config_path, log=job.log_file, details={"script": str(script_path)}
    )


def submit_ray(config: Config, submission: Submission) -> JobRecord | None:
    """A Ray job: this project as its working directory, a `pretrain` command as its entrypoint."""
    from launch import ray_jobs

    settings = config.launch.ray
    address = ray_jobs.resolve_address(settings.address)
    variables = ray_jobs.job_environment(settings.env_vars, settings.pass_env, settings.env_file, os.environ)
    refuse_redacted(variables)
    job_id = f"pretrain-{job_name(config, submission.stage)}"
    config_path, args = stage_command(config, submission, job_id)
    # Training runs as a Ray Train TorchTrainer (pretrain/jobs/ray_train.py); a data build is Ray Data on the cluster.
    module_args = ["pretrain.jobs.ray_train", *args[1:]] if submission.stage == "train" else [CLI_MODULE, *args]
    entrypoint = shlex.join(["python", "-m", *module_args])
    runtime_env = {
        "working_dir": str(PROJECT_ROOT),
        "excludes": settings.excludes,
        # Ray Train would copy every line a worker prints to stderr too: the job's log would hold each twice.
        "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"} | variables | {JOB_ID_VARIABLE: f"ray:{job_id}"},
    }
    if submission.dry_run:
        shown = {"address": address, "submission_id": job_id, "entrypoint": entrypoint, "runtime_env": runtime_env}
        print(json.dumps(redact(shown), indent=2))
        return None
    ray_jobs.submit(address, entrypoint, job_id, runtime_env)
    return new_record(config, "ray", submission.stage, job_id, config_path, details={"address": address})
