"""What MLflow tracking costs a training step, against a real `mlflow server` on 127.0.0.1.

    .venv/bin/python bench/tracking_overhead.py                            # configs/tiny.yaml's model
    .venv/bin/python bench/tracking_overhead.py --config configs/demo.yaml
    .venv/bin/python bench/tracking_overhead.py --pin    # server on CPU 1, training on CPU 0 (1 thread)

The bench starts its own server (fresh SQLite store, job runner off, as the
tests do) and stops it at the end. A step is a real training step of the
DeepSpeed engine `pretrain train` builds (`pretrain.train.engine.build_engine`, one
process, gloo, ZeRO 0) on random token ids, then the loss read on the host
and a log interval's metrics. The loops differ only in the tracker: none;
`Tracker.log_metrics` every step and `flush()` every step; the same with a
flush every 10 steps. Rounds alternate the loops; each figure is the median
round. Per loop it reports the step time, the time spent in the tracker's
calls (what the loop itself waits for) and the server's CPU time per step
(which competes with training only because the server runs on the same
machine here). `--pin` keeps them apart: the server on the last CPU, the
training process (its torch thread and the tracker's threads) on the first,
which measures what tracking costs the training process itself, as with a
server on another machine. For contrast: one synchronous `MlflowClient.log_metric`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from mlflow import MlflowClient
from train_speed import engine_step, single_process_environment

from launch.local import free_port
from model import GPT
from pretrain.config import Config, load_config
from pretrain.tracking.mlflow_tracker import Tracker
from pretrain.train.engine import build_engine, init_distributed

FLUSH_EVERY = (1, 10)


def start_server(root: Path, cpu: int | None) -> tuple[subprocess.Popen, str]:
    uri = f"http://127.0.0.1:{free_port()}"
    command = ["taskset", "-c", str(cpu)] if cpu is not None else []  # its worker inherits the CPU
    command += [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--workers", "1"]
    command += ["--port", uri.rsplit(":", 1)[1], "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise RuntimeError(f"mlflow server did not start; see {root / 'server.log'}")


def cpu_seconds(process: psutil.Process) -> float:
    """User and system time of a process and all its children (the server is a launcher and a uvicorn worker)."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


def job_config(args: argparse.Namespace, uri: str, root: Path, name: str) -> Config:
    micro = load_config(args.config).train.micro_batch_size
    overrides = ["launch.nproc_per_node=1", "parallel.zero_stage=0", "lr_schedule.warmup_steps=1"]
    overrides += [f"train.global_batch_size={micro}", f"tracking.uri={uri}", "tracking.experiment=overhead"]
    overrides += [f"tracking.run_name={name}", f"checkpoint.root={root / 'runs'}"]
    return load_config(args.config, overrides)


@dataclass
class Round:
    step_s: float  # wall time per step
    tracker_s: float  # of which, in the tracker's calls
    server_cpu_s: float  # the server's CPU time per step


def timed_round(engine, micro_batches, steps: range, tracker, flush_every: int, server: psutil.Process) -> Round:
    tokens, in_tracker = micro_batches[0][0].numel(), 0.0
    server_cpu, started = cpu_seconds(server), time.perf_counter()
    for step in steps:
        step_started = time.perf_counter()
        loss = engine_step(engine, micro_batches).item()
        elapsed = time.perf_counter() - step_started
        metrics = {"loss": loss, "lr": engine.get_lr()[0], "tokens_per_s": tokens / elapsed, "step_time_s": elapsed}
        metrics["tokens_seen"] = tokens * step
        if tracker:
            tracker_started = time.perf_counter()
            tracker.log_metrics(metrics, step)
            if step % flush_every == 0:
                tracker.flush()
            in_tracker += time.perf_counter() - tracker_started
    seconds = time.perf_counter() - started
    return Round(seconds / len(steps), in_tracker / len(steps), (cpu_seconds(server) - server_cpu) / len(steps))


def synchronous_log_metric_s(uri: str, run_id: str, calls: int) -> float:
    client = MlflowClient(uri)
    seconds = []
    for step in range(calls):
        started = time.perf_counter()
        client.log_metric(run_id, "synchronous", 1.0, step=step)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--pin", action="store_true", help="server on the last CPU, training on the first, 1 thread")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    server_cpu = None
    if args.pin:
        # Before torch and gloo start their threads, which inherit the calling thread's CPUs.
        server_cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        torch.set_num_threads(1)
    single_process_environment()
    init_distributed()
    with tempfile.TemporaryDirectory() as folder:
        server, uri = start_server(Path(folder), server_cpu)
        try:
            run(args, uri, Path(folder), psutil.Process(server.pid))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def run(args: argparse.Namespace, uri: str, root: Path, server: psutil.Process) -> None:
    config = job_config(args, uri, root, "untracked")
    torch.manual_seed(config.train.seed)
    engine = build_engine(config, GPT(config.model))
    ids = torch.randint(0, config.model.vocab_size, (config.train.micro_batch_size, config.train.seq_len + 1))
    micro_batches = [(ids[:, :-1], ids[:, 1:])]
    trackers = {every: Tracker(job_config(args, uri, root, f"flush-every-{every}")) for every in FLUSH_EVERY}
    loops = {"no tracker": (None, 1), **{f"tracker, flush every {n}": (trackers[n], n) for n in FLUSH_EVERY}}
    for tracker, every in loops.values():  # the first flush starts MLflow's logging threads
        timed_round(engine, micro_batches, range(1, args.warmup + 1), tracker, every, server)
    rounds: dict[str, list[Round]] = {name: [] for name in loops}
    for round_ in range(args.rounds):
        steps = range(args.warmup + 1 + round_ * args.steps, args.warmup + 1 + (round_ + 1) * args.steps)
        for name in list(loops) if round_ % 2 == 0 else list(reversed(loops)):
            rounds[name].append(timed_round(engine, micro_batches, steps, *loops[name], server))
    started = time.perf_counter()
    for tracker in trackers.values():
        tracker.finish()
    finish_s = (time.perf_counter() - started) / len(trackers)
    synchronous = synchronous_log_metric_s(uri, trackers[1].run_id, 50)
    client = MlflowClient(uri)
    logged = {every: len(client.get_metric_history(trackers[every].run_id, "loss")) for every in FLUSH_EVERY}

    where = f"pinned apart: training on CPUs {sorted(os.sched_getaffinity(0))}" if args.pin else "same CPUs"
    print(f"CPU, {torch.get_num_threads()} torch threads; torch {torch.__version__}; mlflow server {uri} ({where})")
    print(
        f"model {args.config}: {engine.module.num_parameters():,} parameters, batch "
        f"{config.train.micro_batch_size} x {config.train.seq_len}; {args.rounds} rounds of {args.steps} steps"
    )
    baseline = statistics.median(r.step_s for r in rounds["no tracker"])
    for name, results in rounds.items():
        step_s = statistics.median(r.step_s for r in results)
        tracker_s = statistics.median(r.tracker_s for r in results)
        server_s = statistics.median(r.server_cpu_s for r in results)
        print(
            f"  {name}: {step_s * 1e3:.2f} ms/step ({(step_s - baseline) / baseline:+.1%}); in tracker calls "
            f"{tracker_s * 1e6:.0f} us/step ({tracker_s / baseline:.2%}); server CPU {server_s * 1e3:.2f} ms/step"
        )
    print(f"  loss values on the server, by flush interval: {logged}, of {args.warmup + args.rounds * args.steps}")
    print(f"  finish(): {finish_s:.2f} s per run (the loss curve, the last batch, the status)")
    print(f"  synchronous MlflowClient.log_metric: {synchronous * 1e3:.2f} ms per call (median of 50)")


if __name__ == "__main__":
    main()
