"""Launching without a cluster: the commands and scripts each target builds, job records, and the errors."""

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from launch.config import SlurmConfig
from launch.errors import LaunchError
from launch.jobs import JobRecord, find_record, load_records, save_record
from launch.local import NodeLayout, deepspeed_command, torchrun_command
from launch.slurm import SlurmJob, render_script
from pretrain.cli import main
from pretrain.config import load_config, with_absolute_paths
from pretrain.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_one_node_meets_on_loopback_and_leaves_sigterm_and_sigint_to_the_ranks():
    command = torchrun_command(NodeLayout(2), "pretrain.cli", ["train"])
    assert command[1:3] == ["-m", "launch.torchrun"] and "--nproc-per-node=2" in command
    # launch/torchrun.py binds the rendezvous there, on a free port; the ranks' store is served from there too
    for option in ("--rdzv-endpoint=127.0.0.1:0", "--rdzv-conf=is_host=true", "--local-addr=127.0.0.1"):
        assert option in command
    # torchrun would kill the ranks on SIGTERM and SIGINT; it must not handle them (launcher_preexec ignores them)
    assert "--signals-to-handle=SIGHUP,SIGQUIT" in command
    assert command[-3:] == ["-m", "pretrain.cli", "train"]


@pytest.mark.parametrize("node_rank, hosts", [(0, "true"), (1, "false")])
def test_several_nodes_meet_through_c10d_hosted_by_node_zero(node_rank, hosts):
    layout = NodeLayout(4, nnodes=2, node_rank=node_rank, rdzv_endpoint="10.0.0.1:29500", rdzv_id="run-a")
    command = torchrun_command(layout, "pretrain.cli", ["train"])
    for option in ("--nnodes=2", f"--node-rank={node_rank}", "--rdzv-backend=c10d", "--rdzv-id=run-a"):
        assert option in command
    assert "--rdzv-endpoint=10.0.0.1:29500" in command and f"--rdzv-conf=is_host={hosts}" in command
    # node 0 serves the ranks' store at the address the user named for the rendezvous
    assert ("--local-addr=10.0.0.1" in command) == (node_rank == 0)


def test_the_deepspeed_launcher_takes_a_hostfile_for_several_nodes():
    command = deepspeed_command(NodeLayout(8, nnodes=2, hostfile="/etc/hosts.ds"), "pretrain.cli", ["train"], 29600)
    assert "--hostfile=/etc/hosts.ds" in command and not any(part.startswith("--num_gpus") for part in command)
    assert "--no_local_rank" in command and "--master_port=29600" in command


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["launch.nnodes=2"], "launch.nnodes = 2 with launch.target = local: one machine is one node"),
        (["launch.target=multinode", "launch.nnodes=2"], "needs launch.rdzv_endpoint=HOST:PORT"),
        (
            ["launch.target=multinode", "launch.nnodes=2", "launch.launcher=deepspeed"],
            "launch.launcher = deepspeed over several nodes needs launch.hostfile",
        ),
        (["launch.rdzv_endpoint=node1"], "launch.rdzv_endpoint = 'node1': write it as HOST:PORT"),
        (["launch.slurm.extra_sbatch=[qos=high]"], "'qos=high' is not an sbatch option"),
        (["launch.slurm.gpu=1"], "launch.slurm.gpu: unknown key; allowed here: partition, account"),
        (["launch.target=kubernetes"], "launch.target = 'kubernetes'"),
    ],
)
def test_launch_settings_that_cannot_work_are_named(overrides, message):
    with pytest.raises(ConfigError, match="invalid config") as error:
        load_config(TINY, ["train.micro_batch_size=2", *overrides])
    assert message in str(error.value)


def test_submitted_configs_hold_absolute_paths(tmp_path):
    config = load_config(TINY, ["launch.hostfile=hosts", f"checkpoint.root={tmp_path}/runs"])
    absolute = with_absolute_paths(config, tmp_path)
    assert absolute.data.output_dir == str(tmp_path / "outputs" / "data" / "tiny")
    assert absolute.checkpoint.root == str(tmp_path / "runs")  # already absolute: kept
    assert absolute.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute.launch.hostfile == str(tmp_path / "hosts")
    assert absolute.launch.jobs_dir == str(tmp_path / "outputs" / "jobs")
    server = with_absolute_paths(load_config(TINY, ["tracking.uri=http://127.0.0.1:5000"]), tmp_path)
    assert server.tracking.uri == "http://127.0.0.1:5000"


def test_every_path_setting_is_marked_so_that_a_submitted_job_gets_it_absolute(tmp_path):
    """with_absolute_paths finds path fields by their schema mark: a path field left unmarked would stay relative."""
    from pydantic import BaseModel

    from pretrain.config import Config

    def fields(schema, prefix=""):
        for name, field in schema.model_fields.items():
            inner = [a for a in (field.annotation, *typing.get_args(field.annotation)) if isinstance(a, type)]
            models = [a for a in inner if issubclass(a, BaseModel)]
            if models:
                yield from fields(models[0], f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", (field.json_schema_extra or {}).get("path", False)

    looks_like_a_path = re.compile(r"(^|_)(dir|file|path|paths|root|hostfile|from|tasks)$")
    found = dict(fields(Config))
    assert {key for key, marked in found.items() if looks_like_a_path.search(key.rpartition(".")[2])} == {
        key for key, marked in found.items() if marked
    }
    settable = [key for key, marked in found.items() if marked and key not in ("data.sources.paths", "train.init_from")]
    lists = ("eval.tasks",)
    relative = [f"{key}=[a/b]" if key in lists else f"{key}=a/b" for key in settable]
    relative.append("data.sources=[{name: web, paths: [a/b]}]")
    raw = load_config(TINY, relative).to_dict()
    absolute = with_absolute_paths(Config.model_validate(raw), tmp_path).to_dict()
    for key, marked in found.items():
        if marked and not key.startswith("train.init_from"):  # a folder it would read: tested in test_export
            assert value_at(absolute, key) in (str(tmp_path / "a" / "b"), [str(tmp_path / "a" / "b")]), key


def value_at(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        node = node[0][part] if isinstance(node, list) else node[part]  # a list of sections: its first
    return node


def slurm_job(nnodes: int, marker: Path | None = Path("/runs/a/summary.json")) -> SlurmJob:
    command = ["exec", "python", "-m", "pretrain.cli", "train", "--config", "/runs/a/config.yaml"]
    return SlurmJob("pretrain-a", Path("/work dir"), nnodes, "/runs/a/slurm-%j.out", command, marker)


def test_the_sbatch_script_asks_for_what_the_config_says_and_is_valid_bash(tmp_path):
    settings = SlurmConfig(
        partition="gpu",
        account="lm",
        time="2-00:00:00",
        gpus_per_node=8,
        cpus_per_node=64,
        mem="0",
        setup=["module load cuda/12.4", "source .venv/bin/activate"],
        extra_sbatch=["--qos=high", "--exclusive"],
        signal_seconds=300,
    )
    script = render_script(settings, slurm_job(4))
    for option in (
        "--nodes=4",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--cpus-per-task=64",
        "--mem=0",
        "--partition=gpu",
        "--account=lm",
        "--time=2-00:00:00",
        "--signal=TERM@300",
        "--requeue",
        "--qos=high",
        "--exclusive",
        "--output=/runs/a/slurm-%j.out",
        "--open-mode=append",
    ):
        assert f"#SBATCH {option}\n" in script
    assert "cd '/work dir'\nmodule load cuda/12.4\nsource .venv/bin/activate\n" in script
    # the rendezvous host is the first node of the allocation; each task learns its node rank from Slurm
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert 'export PRETRAIN_RDZV_ENDPOINT="$head_node:29500"' in script
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=64" in script
    assert "[ ! -e /runs/a/summary.json ]; then" in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)  # it parses


def test_a_one_node_script_has_no_rendezvous_and_requeue_can_be_turned_off():
    script = render_script(SlurmConfig(signal_seconds=0, requeue=False), slurm_job(1))
    assert "head_node" not in script and "--signal" not in script
    assert "--requeue" not in script and "scontrol requeue" not in script


def test_submit_dry_run_prints_the_slurm_script_with_each_node_rank(tmp_path, tiny_data, capsys):
    code = main(
        [
            "submit",
            "--config",
            TINY,
            "--target",
            "slurm",
            "--dry-run",
            "launch.nnodes=2",
            "train.micro_batch_size=4",
            f"checkpoint.root={tmp_path}",
            f"launch.jobs_dir={tmp_path}/jobs",
            f"data.output_dir={tiny_data}",
            "launch.slurm.setup=[source .venv/bin/activate]",
        ]
    )
    script = capsys.readouterr().out
    assert code == 0
    assert script.startswith("#!/bin/bash\n")
    # the job runs the resolved config written to the jobs folder; the run folder is its rank 0's to write
    assert re.search(rf"--config {tmp_path}/jobs/tiny-\d{{8}}-\d{{6}}\.yaml", script)
    assert not (tmp_path / "tiny").exists()
    assert '--node-rank="$SLURM_NODEID" launch.rdzv_endpoint="$PRETRAIN_RDZV_ENDPOINT"' in script


def test_a_dry_run_on_this_machine_prints_its_command_starts_nothing_and_imports_no_torch(tmp_path, tiny_data):
    """`pretrain submit --dry-run` without --detach: the checks, then the launcher command this host would run,
    and no job. The launching process imports none of torch, DeepSpeed, MLflow or Ray: only the ranks need
    them, and each would add seconds to every launch (bench/cli_startup.py)."""
    settings = [f"data.output_dir={tiny_data}", f"checkpoint.root={tmp_path / 'runs'}", "launch.max_restarts=1"]
    command = [sys.executable, "-X", "importtime", "-m", "pretrain.cli", "submit", "--config", TINY, "--dry-run"]
    result = subprocess.run(
        [*command, *settings], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r"-m launch\.torchrun --nproc-per-node=2 .*--max-restarts=1 .*-m pretrain\.cli train", result.stdout
    )
    assert "nothing started" in result.stdout
    assert not (tmp_path / "runs").exists()
    imported = {
        line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time")
    }
    assert "pretrain.train.preflight" in imported
    assert not imported & {"torch", "deepspeed", "mlflow", "ray"}


def record(job_id: str, target: str = "slurm") -> JobRecord:
    return JobRecord(target, job_id, "a", "/runs/a", "/runs/a/config.yaml", "sqlite:///m.db", "e")


def test_job_records_are_found_by_id_or_target_and_id(tmp_path):
    save_record(tmp_path, record("17"))
    save_record(tmp_path, record("17", "ray"))
    save_record(tmp_path, record("pretrain-a-1", "ray"))
    assert sorted(r.mlflow_job_tag for r in load_records(tmp_path)) == ["ray:17", "ray:pretrain-a-1", "slurm:17"]
    assert find_record(tmp_path, "pretrain-a-1").target == "ray"
    assert find_record(tmp_path, "slurm:17").target == "slurm"
    with pytest.raises(LaunchError, match="job id '17' is ambiguous; give one of"):
        find_record(tmp_path, "17")
    with pytest.raises(LaunchError, match="no job '99' is recorded in"):
        find_record(tmp_path, "99")


def test_a_damaged_record_is_named(tmp_path):
    (tmp_path / "slurm-1.json").write_text("{not json")
    with pytest.raises(LaunchError, match="slurm-1.json: not a job record"):
        load_records(tmp_path)


def test_jobs_list_without_jobs_says_how_they_appear(tmp_path, capsys):
    assert main(["jobs", "list", "--jobs-dir", str(tmp_path)]) == 0
    assert "no jobs recorded in" in capsys.readouterr().out


def test_jobs_status_of_an_unknown_job_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["jobs", "status", "12345", "--jobs-dir", str(tmp_path)]) == 1
    assert "pretrain jobs: error: no job '12345' is recorded" in capsys.readouterr().err


def test_ray_without_an_address_says_where_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = main(["submit", "--config", TINY, "--target", "ray", "--dry-run", f"checkpoint.root={tmp_path}"])
    assert code == 1
    assert "no Ray cluster given: set launch.ray.address=http://HEAD:8265" in capsys.readouterr().err


def test_slurm_commands_missing_from_the_path_are_named(tmp_path, monkeypatch):
    from launch.slurm import sbatch

    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match=r"`sbatch` is not on this machine's PATH.*make slurm"):
        sbatch(script)


def test_a_detached_job_that_ends_while_its_state_is_asked_has_ended_not_been_lost(tmp_path, monkeypatch):
    """The supervisor writes the exit status, then exits: asked in between, the job has ended, not been lost."""
    from launch import detached
    from launch.detached import state

    exit_file = tmp_path / ".a.exit"
    job = JobRecord("local", "a", "a", "/runs/a", "/runs/a/c.yaml", "sqlite:///m.db", "e", details={})
    job.details = {"pid": 1, "create_time": 0.0, "exit_file": str(exit_file)}

    def ends_now(record: JobRecord) -> None:  # no supervisor found: it wrote its exit status and was gone
        exit_file.write_text('{"returncode": 0, "sigterm": false}')

    monkeypatch.setattr(detached, "_supervisor", ends_now)
    assert str(state(job)) == "SUCCEEDED"
    exit_file.unlink()
    monkeypatch.setattr(detached, "_supervisor", lambda record: None)
    assert state(job).state == "LOST"  # gone without an exit status: killed
