"""Every launch target running a real job: detached local processes, two nodes meeting through torchrun's
c10d rendezvous, a Slurm cluster and a Ray cluster; each followed and stopped with `pretrain jobs`."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import psutil
import pytest

from launch.jobs import find_record
from launch.targets import target
from pretrain.cli import main
from pretrain.weights.checkpoint_folder import latest_tag
from tests.helpers import (
    LAYOUT_RUN,
    SLOW,
    free_port,
    kill_rank_after_first_checkpoint,
    logged_metric,
    pretrain,
    steps_logged,
    tiny_job_config,
)

pytestmark = pytest.mark.slow


# A rank killed with kill -9 after the first checkpoint, and launch.max_restarts=1: the job restarts its ranks
# from the checkpoint and finishes by itself, every step logged once.
RESTART = ("checkpoint.every_steps=2", "launch.max_restarts=1")
# A kill or a signal lands mid-run with rank 0 made slow, without steps to spare.
RAY_SLOW = "launch.ray.env_vars={" + ", ".join(f"{name}: '{value}'" for name, value in SLOW.items()) + "}"


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    folder = tmp_path_factory.mktemp("targets")
    return {"work": folder, "config": [*tiny_job_config(folder, tiny_data), f"launch.jobs_dir={folder / 'jobs'}"]}


def jobs(work, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pretrain jobs ...` on the test's jobs folder, in this process (the CLI's main, as the command runs it: a
    new process would spend 2.5 CPU-s on imports beside the job it asks about); `env` reaches a scheduler (a
    cluster's variables)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["jobs", *args, "--jobs-dir", str(work["work"] / "jobs")])
    if check and code != 0:
        raise AssertionError(f"pretrain jobs {' '.join(args)} failed:\n{out.getvalue()[-3000:]}\n{err.getvalue()}")
    return subprocess.CompletedProcess(["jobs", *args], code, out.getvalue(), err.getvalue())


def submitted_id(output: str) -> str:
    match = re.search(r"submitted \w+ job (\S+)", output)
    assert match, output
    return match.group(1)


def wait_for_state(work, job_id: str, states: tuple[str, ...], timeout_s: float = 600, cluster=None) -> str:
    """Ask the job's scheduler for its state every second until it is one of `states` (with a cluster, in its
    environment), then return `pretrain jobs status`. The poll asks as `pretrain jobs` does (launch/targets.py),
    in this process: a CLI process every poll would take the job's CPU (Ray's client alone imports in 0.8 s)."""
    record = find_record(work["work"] / "jobs", job_id)
    env = cluster.env if cluster else None
    deadline = time.time() + timeout_s
    while True:
        with mock.patch.dict(os.environ, env or {}):
            state = target(record.target).state(record)
        if state.state in states:
            return jobs(work, "status", job_id, env=env).stdout
        daemons = cluster.log_tails() if cluster else ""
        assert time.time() < deadline, f"still {state} after {timeout_s} s:\n{daemons}"
        time.sleep(1)


def test_two_nodes_meet_through_c10d_and_train_as_one_two_rank_job_restarted_together(work, two_rank_losses):
    """Two launcher processes on this machine, node ranks 0 and 1, one rank each: the 2-rank job's losses.

    The rendezvous is named at 127.0.0.2, another loopback address: node 0 serves the rendezvous and the
    ranks' store there, and on no other address. Node 1's rank is killed after the first checkpoint: both
    nodes' torchrun agents meet again and restart their ranks from it.
    """
    endpoint = f"127.0.0.2:{free_port()}"
    layout = [
        "launch.target=multinode",
        "launch.nnodes=2",
        "launch.nproc_per_node=1",
        f"launch.rdzv_endpoint={endpoint}",
    ]
    command = [sys.executable, "-m", "pretrain.cli", "train", *work["config"], "tracking.run_name=two-nodes"]
    command += [*LAYOUT_RUN, "parallel.zero_stage=1", *layout, *RESTART]
    nodes = [
        subprocess.Popen(
            [*command, f"--node-rank={rank}"],
            cwd=work["work"],
            env=os.environ | SLOW,
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (1, 0)  # the second host may come first: node 0 hosts the rendezvous whenever it arrives
    ]
    node_zero = psutil.Process(nodes[1].pid)
    deadline, rendezvous = time.time() + 300, set()
    while nodes[1].poll() is None and time.time() < deadline and "127.0.0.2" not in rendezvous:
        rendezvous = {
            c.laddr.ip
            for process in node_zero.children(recursive=True)
            for c in connections(process)
            if c.status == psutil.CONN_LISTEN and c.laddr.port == int(endpoint.rpartition(":")[2])
        }
        time.sleep(0.2)
    assert rendezvous == {"127.0.0.2"}  # the named address, not every interface
    kill_rank_after_first_checkpoint(work["work"] / "runs" / "two-nodes")
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "final train loss" in outputs[1]  # node 0 reports the run
    assert outputs[1].count("resumed from checkpoint") == 1
    assert steps_logged(work["work"], "two-nodes") == list(range(1, 11))
    losses = list(logged_metric(work["work"], "two-nodes").values())
    assert losses == pytest.approx(two_rank_losses, rel=1e-5)


def connections(process: psutil.Process) -> list:
    try:
        return process.net_connections("inet")
    except psutil.Error:
        return []  # gone meanwhile


def test_a_detached_local_job_is_followed_to_its_end_and_linked_to_its_mlflow_run(work):
    submitted = pretrain(
        "submit",
        *work["config"],
        "--detach",
        "tracking.run_name=detached",
        "train.max_steps=5",
        "lr_schedule.warmup_steps=1",
        cwd=work["work"],
    )
    run_dir = work["work"] / "runs" / "detached"
    assert f"log: {run_dir / 'job.log'}" in submitted.stdout
    job_id = submitted_id(submitted.stdout)
    assert job_id in jobs(work, "list").stdout
    status = wait_for_state(work, job_id, ("SUCCEEDED", "FAILED", "LOST"))
    assert re.search(r"^state: +SUCCEEDED$", status, re.MULTILINE), status
    assert re.search(r"^MLflow run: +[0-9a-f]{32} \(FINISHED\) in experiment 'tiny'", status, re.MULTILINE), status
    assert re.search(r"^finished: +5 steps, train loss [\d.]+", status, re.MULTILINE), status
    assert "step      5/5" in jobs(work, "logs", job_id).stdout
    assert len(jobs(work, "logs", job_id, "--tail", "3").stdout.splitlines()) == 3
    listed = jobs(work, "list").stdout.splitlines()
    assert listed[0].split() == ["JOB", "ID", "TARGET", "STAGE", "SUBMITTED", "RUN", "STATE"]
    assert re.search(rf"^{job_id} +local +train +\S+ +detached +SUCCEEDED$", "\n".join(listed), re.MULTILINE)


def test_cancelling_a_detached_job_saves_a_checkpoint_and_the_same_submit_continues_it(work):
    config = [*work["config"], "tracking.run_name=cancelled", *LAYOUT_RUN, "train.max_steps=400"]
    job_id = submitted_id(pretrain("submit", *config, "--detach", cwd=work["work"], env=os.environ | SLOW).stdout)
    log = work["work"] / "runs" / "cancelled" / "job.log"
    deadline = time.time() + 600
    while "step      2/400" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(1)
    assert "sent SIGTERM to job" in jobs(work, "cancel", job_id).stdout
    status = wait_for_state(work, job_id, ("STOPPED", "SUCCEEDED", "FAILED", "LOST"))
    assert "STOPPED (by SIGTERM after saving a checkpoint; submit again to continue)" in status
    step = int(re.search(r"SIGTERM: stopped after step (\d+)", log.read_text()).group(1))
    assert latest_tag(work["work"] / "runs" / "cancelled") == f"step_{step:08d}"
    cancel_again = jobs(work, "cancel", job_id, check=False)
    assert cancel_again.returncode == 1 and "is not running (STOPPED" in cancel_again.stderr
    resumed = pretrain("submit", *config, "train.max_steps=" + str(step + 2), cwd=work["work"])
    assert "continuing" in resumed.stdout and f"step {step + 2:>6}/{step + 2}" in resumed.stdout
    summary = json.loads((work["work"] / "runs" / "cancelled" / "summary.json").read_text())
    assert summary["steps"] == step + 2


def test_a_detached_data_build_is_a_job_too(work, make_documents):
    corpus = work["work"] / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in make_documents(300)))
    out = work["work"] / "data-job"
    source = f"data.sources=[{{name: web, paths: [{corpus}]}}]"
    submitted = pretrain(
        "submit", *work["config"], "--detach", "--stage", "data", source, f"data.output_dir={out}", cwd=work["work"]
    )
    job_id = submitted_id(submitted.stdout)
    followed = jobs(work, "logs", job_id, "--follow")  # prints the output as it grows, returns when the job ends
    assert f"job {job_id} ended: SUCCEEDED" in followed.stderr, followed.stdout[-3000:]
    log = Path(find_record(work["work"] / "jobs", job_id).log)
    assert followed.stdout == log.read_text() and "shards, tokenizer, manifest" in followed.stdout
    assert "MLflow run" not in jobs(work, "status", job_id).stdout
    assert json.loads((out / "manifest.json").read_text())["sources"]["web"]["documents_in"] == 300


def test_cancelling_a_detached_data_build_stops_its_process(work):
    out = f"data.output_dir={work['work'] / 'data-cancelled'}"  # the embedded corpus: a build of a minute or more
    job_id = submitted_id(
        pretrain("submit", *work["config"], "--detach", "--stage", "data", out, cwd=work["work"]).stdout
    )
    time.sleep(5)
    assert "it stops; submit it again to resume" in jobs(work, "cancel", job_id).stdout
    status = wait_for_state(work, job_id, ("CANCELLED", "SUCCEEDED", "FAILED", "LOST"), timeout_s=120)
    assert "state:      CANCELLED (by SIGTERM" in status, status


def slurm_submit(work, slurm_cluster, *args: str, check: bool = True, env: dict | None = None):
    env = slurm_cluster.env | (env or {})  # sbatch passes the submitting environment to the job
    return pretrain("submit", *work["config"], "--target", "slurm", *args, cwd=work["work"], env=env, check=check)


def test_a_slurm_job_trains_as_torchrun_does_restarts_a_killed_rank_and_requeues_itself_on_sigterm(
    work, slurm_cluster, two_rank_losses
):
    """The reference run's settings as one Slurm job. A rank killed with kill -9 after the first checkpoint is
    restarted by torchrun in the same allocation; then `scancel --signal=TERM` (what Slurm sends before the time
    limit): the ranks save and exit 0, the script requeues the job, and its second run continues from the
    checkpoint to the end. The losses are the torchrun run's, every step logged once."""
    slow = {"PRETRAIN_FAULT_SLOW_RANK": "0:0.6"}  # time for the kill, the restart and then the signal
    submitted = slurm_submit(
        work, slurm_cluster, "tracking.run_name=slurm", *LAYOUT_RUN, "parallel.zero_stage=1", *RESTART, env=slow
    )
    job_id = submitted_id(submitted.stdout)
    assert job_id.isdigit()
    run_dir = work["work"] / "runs" / "slurm"
    script = next(run_dir.glob("*.sbatch")).read_text()
    assert "#SBATCH --signal=TERM@120" in script and "#SBATCH --requeue" in script
    kill_rank_after_first_checkpoint(run_dir)
    log, deadline = run_dir / f"slurm-{job_id}.out", time.time() + 600
    while "\nstep " not in (log.read_text() if log.exists() else "").partition("resumed from checkpoint")[2]:
        assert time.time() < deadline, slurm_cluster.log_tails()  # restarted, and training again
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", job_id], env=slurm_cluster.env, check=True, timeout=60)
    status = wait_for_state(work, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), cluster=slurm_cluster)
    output = log.read_text()
    assert "state:      COMPLETED (exit code 0:0" in status and "restarts 1" in status, status + output
    assert re.search(r"^MLflow run: +[0-9a-f]{32} \(FINISHED\)", status, re.MULTILINE), status
    assert int(re.search(r"SIGTERM: stopped after step (\d+)", output).group(1)) < 10
    assert f"requeueing job {job_id}" in output and f"slurm job {job_id} (restart 1)" in output
    assert output.count("resumed from checkpoint") == 2  # torchrun's restart, then the requeued job
    assert "step     10/10" in output
    followed = jobs(work, "logs", job_id, "--follow", env=slurm_cluster.env)
    assert followed.stdout == output and f"job {job_id} ended: COMPLETED" in followed.stderr
    assert steps_logged(work["work"], "slurm") == list(range(1, 11))  # one MLflow run: every step once
    losses = list(logged_metric(work["work"], "slurm").values())
    assert losses == pytest.approx(two_rank_losses, rel=1e-5)


def test_slurm_refuses_more_gpus_than_the_partition_has_before_submitting(work, slurm_cluster):
    refused = slurm_submit(work, slurm_cluster, "launch.slurm.gpus_per_node=4", "tracking.run_name=gpus", check=False)
    assert refused.returncode == 1
    assert "launch.slurm.gpus_per_node = 4: partition 'debug' has 0 GPUs per node; ask for at most 0" in refused.stderr


def test_an_unreachable_slurm_controller_is_named(work, slurm_cluster, tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", slurm_cluster.conf.read_text()))
    env = slurm_cluster.env | {"SLURM_CONF": str(conf)}
    refused = pretrain(
        "submit", *work["config"], "--target", "slurm", "tracking.run_name=down", cwd=work["work"], env=env, check=False
    )
    assert refused.returncode == 1
    assert "Slurm's controller cannot be reached" in refused.stderr and "scontrol ping" in refused.stderr


def ray_submit(work, ray_cluster, *args: str, env: dict | None = None, check: bool = True):
    address = f"launch.ray.address={ray_cluster.address}"
    env = ray_cluster.env if env is None else env
    return pretrain(
        "submit", *work["config"], "--target", "ray", address, *args, cwd=work["work"], env=env, check=check
    )


RAY_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def test_a_ray_job_trains_with_ray_train_workers_as_torchrun_does_and_restarts_a_killed_one(
    work, ray_cluster, two_rank_losses
):
    """Two Ray Train workers, one on each node of the cluster, each running the DeepSpeed training loop; one
    killed, and both started again by Ray Train (FailureConfig), from the checkpoint."""
    submitted = ray_submit(
        work, ray_cluster, "tracking.run_name=ray", *LAYOUT_RUN, "parallel.zero_stage=1", *RESTART, RAY_SLOW
    )
    job_id = submitted_id(submitted.stdout)
    kill_rank_after_first_checkpoint(work["work"] / "runs" / "ray")
    status = wait_for_state(work, job_id, RAY_ENDED, cluster=ray_cluster)
    logs = jobs(work, "logs", job_id, env=ray_cluster.env).stdout
    assert "state:      SUCCEEDED" in status, status + logs[-5000:]
    assert re.search(r"^MLflow run: +[0-9a-f]{32} \(FINISHED\)", status, re.MULTILINE), status
    assert logs.count("step     10/10") == 1  # printed once: by rank 0, not copied by Ray Train
    assert "resumed from checkpoint" in logs  # the restarted workers continued from the checkpoint
    assert steps_logged(work["work"], "ray") == list(range(1, 11))
    assert list(logged_metric(work["work"], "ray").values()) == pytest.approx(two_rank_losses, rel=1e-5)
    assert re.search(
        rf"^{job_id} +ray +train .* SUCCEEDED", jobs(work, "list", env=ray_cluster.env).stdout, re.MULTILINE
    )


def test_a_ray_data_build_runs_on_the_cluster(work, ray_cluster, make_documents):
    corpus = work["work"] / "ray-corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in make_documents(300, seed=1)))
    out = work["work"] / "ray-data-built"
    source = f"data.sources=[{{name: web, paths: [{corpus}]}}]"
    job_id = submitted_id(ray_submit(work, ray_cluster, "--stage", "data", source, f"data.output_dir={out}").stdout)
    followed = jobs(work, "logs", job_id, "--follow", env=ray_cluster.env)
    assert f"job {job_id} ended: SUCCEEDED" in followed.stderr, followed.stdout[-5000:]
    assert "shards, tokenizer, manifest" in followed.stdout
    assert json.loads((out / "manifest.json").read_text())["sources"]["web"]["documents_in"] == 300


def test_a_ray_data_build_with_a_bad_source_fails_with_the_error_in_its_logs(work, ray_cluster):
    bad_source = f"data.sources=[{{name: web, paths: [{work['work']}/missing.jsonl]}}]"
    out = f"data.output_dir={work['work'] / 'ray-data'}"
    job_id = submitted_id(ray_submit(work, ray_cluster, "--stage", "data", bad_source, out).stdout)
    status = wait_for_state(work, job_id, RAY_ENDED, cluster=ray_cluster)
    assert "state:      FAILED" in status, status
    assert "missing.jsonl' does not exist" in jobs(work, "logs", job_id, env=ray_cluster.env).stdout


def test_a_ray_job_is_stopped_by_jobs_cancel(work, ray_cluster):
    """Stopped once it runs: while Ray Train starts its workers (which takes a minute here) as well as later."""
    submitted = ray_submit(work, ray_cluster, "tracking.run_name=ray-stopped", "train.max_steps=5000", RAY_SLOW)
    job_id = submitted_id(submitted.stdout)
    assert "state:      RUNNING" in wait_for_state(work, job_id, ("RUNNING", *RAY_ENDED), cluster=ray_cluster)
    assert f"stopping Ray job {job_id}" in jobs(work, "cancel", job_id, env=ray_cluster.env).stdout
    assert "state:      STOPPED" in wait_for_state(work, job_id, RAY_ENDED, timeout_s=120, cluster=ray_cluster)


def test_ray_without_the_token_or_with_a_wrong_one_says_what_to_set(work, ray_cluster):
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH")}
    refused = ray_submit(work, ray_cluster, "tracking.run_name=no-token", env=env, check=False)
    assert refused.returncode == 1
    assert "needs a token (token authentication): set RAY_AUTH_TOKEN" in refused.stderr
    wrong = ray_submit(work, ray_cluster, "tracking.run_name=no-token", env=env | {"RAY_AUTH_TOKEN": "x"}, check=False)
    assert "refused the token given" in wrong.stderr


def test_ray_with_nothing_listening_or_a_gcs_address_says_what_to_give(work, ray_cluster):
    port = free_port()
    down = pretrain(
        "submit",
        *work["config"],
        "--target",
        "ray",
        f"launch.ray.address=http://127.0.0.1:{port}",
        cwd=work["work"],
        check=False,
    )
    assert f"no Ray cluster answers at http://127.0.0.1:{port}" in down.stderr
    gcs = pretrain(
        "submit",
        *work["config"],
        "--target",
        "ray",
        f"launch.ray.address={ray_cluster.gcs_address}",
        cwd=work["work"],
        check=False,
    )
    assert "jobs are submitted to the dashboard's Jobs API, http://HEAD:8265" in gcs.stderr
