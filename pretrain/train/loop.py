"""The training loop: a GPT on a DeepSpeed engine, fed by the shard loader, tracked in MLflow.

Runs in every rank of a job (started by `launch/` through torchrun, or as a
single process). Rank 0 alone prints and talks to MLflow; collective calls
(loss averaging, evaluation, checkpoints) are made by all ranks.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from data_pipeline.loader import BatchLoader
from data_pipeline.locks import FolderInUse, FolderLock
from model import GPT
from pretrain import layout
from pretrain.config import Config
from pretrain.errors import ConfigError, TrainingError, on_every_rank
from pretrain.layout import CONFIG_HISTORY, MANIFEST_NAME
from pretrain.tracking import Tracker, backend
from pretrain.train.console import Console
from pretrain.train.cost import model_cost
from pretrain.train.data import make_loader, verify_shards_together
from pretrain.train.deepspeed_config import deepspeed_config
from pretrain.train.engine import build_engine, init_distributed
from pretrain.train.float8 import float8_summary
from pretrain.train.health import handle_spike, start_heartbeat, straggler_metrics
from pretrain.train.metrics import IntervalMeter, memory_metrics
from pretrain.train.preemption import PreemptionWatch
from pretrain.train.preflight import check_job
from pretrain.train.progress import Progress, export_if_due, restore, save_checkpoint, validates_at
from pretrain.train.resume import describe_changes, finished_before_this_attempt, reported_changes
from pretrain.train.run_files import write_run_files
from pretrain.train.sampling import generate_text
from pretrain.train.spikes import SpikeWatch
from pretrain.train.stability import NonFiniteSteps
from pretrain.train.step import mean_over_ranks, train_step
from pretrain.train.stragglers import StragglerWatch
from pretrain.train.validate import LoopEvaluation, dataset_tokenizer
from pretrain.weights.checkpoint_folder import checkpoint_dir, tag_for
from pretrain.weights.layout_change import Layout
from pretrain.weights.model_folder import folder_state_dict


def check_world_size(config: Config) -> None:
    world_size = dist.get_world_size()
    if world_size != config.world_size:
        message = (
            f"launch.nproc_per_node x launch.nnodes = {config.world_size}, but the job has {world_size} "
            f"processes; start it with `pretrain train`, which launches the right number"
        )
        raise on_every_rank(ConfigError(message))


def train(config: Config, require_checkpoint: bool = False) -> Progress:
    """Train this rank's part of the job; continue from the run folder's latest intact checkpoint if it holds one."""
    if finished_before_this_attempt(config.run_dir, config.train.max_steps):
        print(f"{config.run_dir} finished in an earlier attempt of this job; nothing to do", flush=True)
        return Progress(step=config.train.max_steps)
    manifest, resume = check_job(config, require_checkpoint)
    init_distributed()
    check_world_size(config)
    preemption = PreemptionWatch()
    lock = hold_run_folder(config)
    try:
        progress = run_job(config, manifest, resume, preemption)
    finally:
        if lock:
            lock.release()
    # Leave together: a rank that exits while others still use the process
    # group can abort in the communication library's teardown.
    dist.barrier()
    dist.destroy_process_group()
    return progress


def hold_run_folder(config: Config) -> FolderLock | None:
    """Rank 0 takes the run folder's lock; every rank learns whether it could (a collective call)."""
    lock, refusal = None, [None]
    if dist.get_rank() == 0:
        try:
            lock = layout.lock(config.run_dir, f"pretrain train ({config.world_size} ranks)")
        except FolderInUse as err:
            refusal = [str(err)]
    dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        raise on_every_rank(FolderInUse(refusal[0]))
    return lock


def run_job(config: Config, manifest: dict, resume: bool, preemption: PreemptionWatch) -> Progress:
    """Verify the data, build the engine, restore the checkpoint, then train (or finish) and report."""
    data_dir, rank_zero, progress = Path(config.data.output_dir), dist.get_rank() == 0, Progress()
    verify_shards_together(data_dir, manifest)
    if stopped_before_training(preemption, rank_zero):
        return progress
    torch.manual_seed(config.train.seed)  # every rank starts from the same weights
    model = GPT(config.model)
    if config.train.init_from and not resume:
        # Continued pretraining: the weights of an export; the optimizer and schedule start afresh.
        model.load_state_dict(folder_state_dict(Path(config.train.init_from), config.model))
    engine = build_engine(config, model)
    if config.train.float8.enabled and rank_zero:
        print(float8_summary(model, config.train.float8), flush=True)
    if compiles(config):
        engine.compile()
    loader, val = make_loader(config, manifest), LoopEvaluation(config, manifest)
    run_id, saved_config = restore(config, engine, loader, progress) if resume else (None, None)
    if stopped_before_training(preemption, rank_zero):
        return progress
    tracker = start_tracking(config, data_dir, loader, run_id, progress, saved_config) if rank_zero else None
    try:
        if run_loop(config, engine, loader, val, progress, tracker, preemption):
            finish(config, engine, loader, val, progress, tracker, manifest)
        elif tracker:
            tracker.finish("KILLED")
    except BaseException:
        if tracker:
            tracker.finish("FAILED")
        raise
    return progress


def stopped_before_training(preemption: PreemptionWatch, rank_zero: bool) -> bool:
    """Whether a stop was asked for during start-up (a collective call): nothing was trained, nothing to save."""
    if not preemption.requested():
        return False
    if rank_zero:
        print("stopped on request before training began; nothing new to save", flush=True)
    return True


def compiles(config: Config) -> bool:
    """train.compile, where null means: on a CUDA GPU."""
    return torch.cuda.is_available() if config.train.compile is None else config.train.compile


def start_tracking(
    config: Config, data_dir: Path, loader: BatchLoader, run_id: str | None, progress: Progress, saved: dict | None
) -> Tracker:
    """Start (or, with `run_id`, continue) the MLflow run; write the run folder's files and log what defines it.

    config.yaml is written here, once the checkpoint has loaded; a resume
    that changed settings says so, in the console and as a tag of the run.
    """
    tracker = backend(config.tracking.backend).start(config, run_id)
    files = write_run_files(config, data_dir, deepspeed_config(config), progress.resumed_at)
    for path in [*files, data_dir / MANIFEST_NAME]:
        tracker.log_artifact(path)
    # What the loader makes of the dataset at this sequence length: only shard tails are left out.
    tags = {
        "data.fingerprint": loader.fingerprint,
        "data.train_sequences": sum(len(group) for group in loader.groups),
        "data.dropped_tokens": loader.dropped_tokens,
    }
    changes = reported_changes(saved, config) if saved is not None else []
    if saved is not None and not changes and Layout.of(saved) == Layout.of(config.to_dict()):
        # The same settings on the same layout: the steps the run holds already (logged before a restart)
        # are trained to the same losses, bit for bit, and not logged twice. Otherwise they are logged again.
        progress.logged_through = tracker.last_logged_step()
    if changes:
        described = describe_changes(changes)
        print(f"continuing at step {progress.step} with changed settings: {described}", flush=True)
        tags[f"config.changed_at_step_{progress.step}"] = described[:5000]
        for path in sorted((config.run_dir / CONFIG_HISTORY).glob("*.yaml")):
            tracker.log_artifact(path, CONFIG_HISTORY)
    tracker.set_tags(tags)
    return tracker


def run_loop(config: Config, engine, loader, val, progress: Progress, tracker, preemption: PreemptionWatch) -> bool:
    """Train to `train.max_steps`; return False when stopped early by SIGTERM (after saving)."""
    heartbeat = start_heartbeat(config, tracker)
    try:
        return train_steps(config, engine, loader, val, progress, tracker, preemption, heartbeat)
    finally:
        if heartbeat:
            heartbeat.stop()


def train_steps(
    config: Config, engine, loader, val, progress: Progress, tracker, preemption: PreemptionWatch, heartbeat
) -> bool:
    train = config.train
    tokens_per_step = train.global_batch_size * train.seq_len
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    flops_per_token = model_cost(config.model, train.seq_len).flops_per_token
    world_size = dist.get_world_size()
    meter = IntervalMeter(tokens_per_step, flops_per_token, device_name, world_size, train.spike.factor)
    stragglers = StragglerWatch(train.straggler_factor, train.straggler_intervals, engine.device)
    spikes = SpikeWatch(train.spike) if train.spike.action != "log" else None
    nonfinite = NonFiniteSteps(engine, train.max_nonfinite_steps)
    console = Console(train.max_steps) if tracker else None

    def beat(phase: str) -> None:
        if heartbeat:
            heartbeat.beat(progress.step + 1, phase)

    if progress.step == 0:
        # The untrained model's validation loss: the point the curve falls from.
        report(progress, validation_metrics(engine, val, progress, tracker), tracker, console)
    while progress.step < train.max_steps:
        started = time.perf_counter()
        loss, own_seconds = train_step(engine, loader, beat, spikes)
        progress.step += 1
        progress.tokens_seen += tokens_per_step
        meter.add_step(time.perf_counter() - started)
        stragglers.add_step(own_seconds)
        if spikes and spikes.ratio is not None:
            rolled_back = handle_spike(config, engine, loader, progress, tracker, console, spikes)
            nonfinite.refused()  # after handle_spike: a rollback restored the engine's count of skipped steps
            if rolled_back:
                continue  # the steps from the checkpoint on are trained again, and logged then
        elif nonfinite.record(progress.step):
            stop_if_diverged(config, engine, loader, progress, tracker, nonfinite)
        beat("eval")
        metrics = step_metrics(config, engine, val, progress, tracker, meter, nonfinite, loss)
        if metrics:
            metrics |= straggler_metrics(stragglers, world_size, console)
            report(progress, metrics, tracker, console)
        elif console:
            console.progress(progress.step)
        last = progress.step == train.max_steps
        beat("checkpoint")
        if preemption.requested() and not last:
            saved = save_checkpoint(config, engine, loader, progress, tracker)
            if console:
                console.line(
                    f"SIGTERM: stopped after step {progress.step}, saved {saved}; run the same command to continue"
                )
            return False
        if config.checkpoint.every_steps and progress.step % config.checkpoint.every_steps == 0 and not last:
            save_checkpoint(config, engine, loader, progress, tracker)
            export_if_due(config, progress, console.line if console else None)
    return True


def step_metrics(config: Config, engine, val, progress: Progress, tracker, meter, nonfinite, loss) -> dict:
    """The metrics due after this step: training ones every log interval, validation every eval interval."""
    train, metrics = config.train, {}
    last = progress.step == train.max_steps
    if progress.step % train.log_interval == 0 or last:
        # The loss crosses to the host once per log interval: no synchronization in the steps between.
        progress.train_loss = mean_over_ranks(loss)
        metrics = meter.metrics(progress.train_loss, engine.get_lr()[0], progress.step, train.max_steps)
        metrics |= {"tokens_seen": progress.tokens_seen, "skipped_steps": nonfinite.total, **memory_metrics()}
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
    if validates_at(config, progress.step):
        metrics |= validation_metrics(engine, val, progress, tracker)
    return metrics


def stop_if_diverged(config: Config, engine, loader, progress: Progress, tracker, nonfinite: NonFiniteSteps) -> None:
    """After too many consecutive skipped steps, save the (untouched) weights and stop with an error."""
    if not nonfinite.exhausted:
        return
    saved = save_checkpoint(config, engine, loader, progress, tracker)
    raise TrainingError(
        f"the loss or gradient norm was not finite for {nonfinite.consecutive} consecutive steps "
        f"({nonfinite.first_of_run}-{progress.step}; train.max_nonfinite_steps = {nonfinite.limit}); each was "
        f"skipped, so {saved} holds the weights from before step {nonfinite.first_of_run}. Lower optimizer.lr, "
        f"raise lr_schedule.warmup_steps or use train.precision=fp32/bf16, then continue with --resume"
    )


def validation_metrics(engine, val: LoopEvaluation, progress: Progress, tracker) -> dict:
    result, metrics = val.run(engine, progress.step, tracker)
    progress.val_loss = result.loss
    return metrics


def report(progress: Progress, metrics: dict, tracker, console: Console | None) -> None:
    if tracker is None:
        return
    if progress.step > progress.logged_through:
        tracker.log_metrics(metrics, progress.step)
    tracker.flush()
    console.report(progress.step, metrics)


def finish(config: Config, engine, loader, val, progress: Progress, tracker, manifest: dict) -> None:
    """The end of a run: the last checkpoint, the sample, the summary; MLflow's run FINISHED.

    A run resumed at its last step (its finish was cut short before) saves
    nothing anew: it makes what the cut-short one did not.
    """
    if progress.resumed_at == progress.step:
        saved = checkpoint_dir(config.run_dir) / tag_for(progress.step)
        if math.isnan(progress.val_loss):
            progress.val_loss = val.validation_loss(engine).loss
    else:
        saved = save_checkpoint(config, engine, loader, progress, tracker)
        export_if_due(config, progress, print if tracker else None)
    tokenizer = dataset_tokenizer(config.data.output_dir)
    # Every rank generates: under ZeRO-3 the forward pass gathers weights collectively.
    with torch.compiler.set_stance("force_eager"):
        sample = generate_text(
            engine.module, tokenizer, config.sample.prompt, config.sample.tokens, seed=config.train.seed
        )
    if tracker is None:
        return
    summary = {
        "mlflow_run_id": tracker.run_id,
        "steps": progress.step,
        "tokens_seen": progress.tokens_seen,
        "train_loss": progress.train_loss,
        "val_loss": progress.val_loss,
        "val_sequences": val.held_out.sequences,
        "val_tokens": val.held_out.sequences * config.train.seq_len,
        "checkpoint": str(saved),
        "data_fingerprint": manifest["fingerprint"],
        "sample": sample,
    }
    summary_path = layout.write_summary(config.run_dir, summary)
    tracker.log_text(sample, "samples/final.txt")
    tracker.log_artifact(summary_path)
    tracker.finish()
    print(f"sample: {sample!r}", flush=True)
