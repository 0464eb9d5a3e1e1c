"""What each `pretrain` subcommand does: a few lines each, calling into the package that owns the work.

Imports are made inside each command: `pretrain config` should not wait for
DeepSpeed, and a job's signal handlers must be in place before the slow imports
(pretrain/cli/__init__.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.errors import PretrainError
from pretrain.layout import CHECKPOINTS_DIR, EXPORT_DIR

if TYPE_CHECKING:
    from pretrain.config import Config


def in_launched_rank() -> bool:
    return "LOCAL_RANK" in os.environ


def cmd_data(args: argparse.Namespace, config: Config) -> int:
    from data_pipeline.report import build_summary, inspect_dataset
    from data_pipeline.shards import read_manifest, verify_dataset

    data_dir = getattr(args, "dir", None) or Path(config.data.output_dir)
    if args.data_command == "build":
        from data_pipeline.build import build_dataset

        say = functools.partial(print, flush=True)
        manifest = build_dataset(
            config.data, config.to_public_dict(), args.ray_address, say, args.verbose, force=args.force
        )
        print(build_summary(manifest))
        print(f"shards, tokenizer, manifest and rejects: {data_dir.resolve()}")
    elif args.data_command == "cloze":
        from data_pipeline.cloze import write_cloze_task

        out = args.out or data_dir / "cloze.jsonl"
        write_cloze_task(data_dir, out, args.examples, args.choices, args.tokens, args.seed)
        count = len(out.read_text().splitlines())
        print(f"cloze task of {count} examples, {args.choices} choices each: {out.resolve()}")
        print(f"  score it while training with eval.tasks=[{out}], or: pretrain eval --task {out}")
    elif args.data_command == "inspect":
        print(inspect_dataset(data_dir, read_manifest(data_dir)))
    else:
        manifest = verify_dataset(data_dir)
        print(f"{data_dir}: {len(manifest['shards'])} shards and the tokenizer match the manifest's checksums")
    return 0


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    if in_launched_rank():
        from launch.local import exit_with_parent
        from pretrain.train import preemption

        # First, before the slow start-up: the launcher ignores SIGTERM and this rank
        # inherited that; from here on a stop request is kept (pretrain/train/preemption.py).
        preemption.listen()
        exit_with_parent()
        if os.environ.get("RANK", "0") != "0":
            # DeepSpeed imports MLflow if it can, for an autotuner that training does not use: 2.1 s of
            # each rank's start-up (bench/cli_startup.py). Only rank 0 tracks, so the others refuse that
            # import (a None in sys.modules makes it raise ImportError) and DeepSpeed goes on without it.
            sys.modules.setdefault("mlflow", None)
        # Defense in depth: any torch.load in a rank, DeepSpeed's own included, rebuilds data only.
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        from pretrain.train.loop import train

        try:
            train(config, require_checkpoint=args.resume)
        finally:
            preemption.stop_listening()
        return 0
    from pretrain.jobs.submit import run_here

    return run_here(config, args.resume, args.node_rank)


def cmd_submit(args: argparse.Namespace, config: Config) -> int:
    from pretrain.jobs.submit import Submission, submit

    return submit(config, Submission(args.stage, args.resume, args.node_rank, args.detach, args.dry_run))


def cmd_jobs(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.jobs.status import jobs_command

    jobs_dir = args.jobs_dir or Path(load_config(args.config).launch.jobs_dir)
    if getattr(args, "follow", False):
        from pretrain.jobs.status import follow_logs

        follow_logs(jobs_dir, args.job_id, args.tail)
        return 0
    print(jobs_command(args.jobs_command, jobs_dir, getattr(args, "job_id", None), getattr(args, "tail", None)))
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    if args.from_registry:
        from pretrain.tracking import backend

        out = args.out or Path(args.from_registry.replace("@", "-").replace("/", "-"))
        folder, version = backend(config.tracking.backend).fetch(args.from_registry, out, config.tracking.uri)
        print(f"fetched {version.name} version {version.version} ({version.source}): {folder.resolve()}")
        return 0
    if args.from_nanogpt:
        from pretrain.export.exporter import import_nanogpt

        if args.tokenizer is None or args.out is None:
            raise PretrainError("--from-nanogpt needs --tokenizer FILE (its tokenizer.json) and --out FOLDER")
        folder, info = import_nanogpt(args.from_nanogpt, args.tokenizer, args.out, args.format, args.dtype)
        print(f"imported nanoGPT's checkpoint (iteration {info.get('iter_num', '?')}): {folder.resolve()}")
        print(f"  train from it with train.init_from={folder}, or: pretrain generate --model {folder}")
        return 0
    from pretrain.export.exporter import export

    if args.require and not args.register:
        raise PretrainError("--require gates a registration: give it with --register NAME")
    path = args.checkpoint or config.run_dir
    registry = Registration(args, config) if args.register else None
    # The scores are checked before the weights are gathered and written: a refused checkpoint costs no export.
    gate = registry.check_requirements if registry else None
    folder, found, info = export(path, args.out, args.tag, args.format, args.dtype, args.max_shard_size, gate)
    print(f"exported model folder: {folder.resolve()}")
    if registry:
        registry.register(folder, found, info)
    return 0


class Registration:
    """`export --register NAME [--alias A] [--require METRIC>=X]` against the run's store, or the one given."""

    def __init__(self, args: argparse.Namespace, config: Config):
        self.args, self.config = args, config

    def store(self, found):
        from pretrain.config import tracking_uri_chosen
        from pretrain.tracking import backend

        # A tracking.uri the user gave (a config, an override, MLFLOW_TRACKING_URI) wins; else the run's own.
        chosen = tracking_uri_chosen(self.args.config, self.args.overrides)
        uri = self.config.tracking.uri if chosen else found.config.tracking.uri
        return backend(found.config.tracking.backend), uri

    def check_requirements(self, found) -> None:
        from pretrain.export.gate import check_requirements

        store, uri = self.store(found)
        run, step = found.mlflow_run_id, found.step
        met = check_requirements(
            self.args.require, lambda metric: store.metric_at(uri, run, metric, step), step, f"MLflow run {run}"
        )
        for line in met:
            print(f"required score met: {line}")

    def register(self, folder: Path, found, info: dict) -> None:
        from pretrain.tracking.metric_names import VAL_LOSS

        store, uri = self.store(found)
        val_loss = store.metric_at(uri, found.mlflow_run_id, VAL_LOSS, found.step)
        version = store.register(folder, info, self.args.register, self.args.alias, uri, val_loss)
        print(f"registered {version.name} version {version.version} ({version.source}) at {uri}")
        for alias in self.args.alias:
            print(f"  {version.name}@{alias}")


def cmd_eval(args: argparse.Namespace, config: Config) -> int:
    if args.lm_eval_tasks:
        from pretrain.evaluation.lm_eval_tasks import lm_eval_command, write_lm_eval_tasks

        if not args.task:
            raise PretrainError("--lm-eval-tasks DIR writes the --task files for lm-eval: give at least one --task")
        names = write_lm_eval_tasks(args.task, args.lm_eval_tasks)
        print(f"lm-evaluation-harness tasks {', '.join(names)} in {args.lm_eval_tasks.resolve()}; score an export:")
        print("  " + lm_eval_command(args.model or config.run_dir / EXPORT_DIR, names, args.lm_eval_tasks))
        return 0
    from pretrain.config import tracking_uri_chosen
    from pretrain.tools.evaluate import describe, evaluate, log_results, write_results

    scored = evaluate(config, args.model, args.checkpoint, args.tag, args.task, args.data, args.batch_tokens)
    out = write_results(scored, args.out)
    print(describe(scored))
    print(f"results, with each example's log-likelihoods: {out.resolve()}")
    if not args.no_mlflow:
        run = (
            scored.checkpoint.config
            if scored.checkpoint and not tracking_uri_chosen(args.config, args.overrides)
            else config
        )
        run_id = log_results(scored, config, run.tracking.uri, out, args.model)
        print(f"logged to MLflow run {run_id} at {run.tracking.uri}")
    return 0


def cmd_generate(args: argparse.Namespace, config: Config) -> int:
    from pretrain.export.exporter import load_trained_model
    from pretrain.train.sampling import generate_texts

    model, tokenizer = load_trained_model(args.model or generation_source(config), args.tag)
    texts = generate_texts(
        model,
        tokenizer,
        args.prompt or [config.sample.prompt],
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        seed=args.seed,
    )
    print("\n\n".join(texts))
    return 0


def generation_source(config: Config) -> Path:
    """The run's export, or else its latest checkpoint (saying so): a trained run generates before it is exported."""
    exported = config.run_dir / EXPORT_DIR
    if exported.is_dir():
        return exported
    if not (config.run_dir / CHECKPOINTS_DIR).is_dir():
        raise PretrainError(
            f"{config.run_dir}: no trained run here (no {CHECKPOINTS_DIR}/ nor {EXPORT_DIR}/); train it first "
            f"(`pretrain train` with the same --config and overrides), or pass --model FOLDER"
        )
    print(
        f"no export in {exported}: generating from the run's latest checkpoint; `pretrain export` with the same "
        f"--config makes the Hugging Face folder (docs/export.md)",
        file=sys.stderr,
    )
    return config.run_dir


def cmd_model(args: argparse.Namespace) -> int:
    from pretrain.tools.model_info import describe

    print(describe(args.preset, args.precision, args.zero_stage, args.world_size, args.seq_len))
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from pretrain.tools.attention_maps import show_attention

    print(show_attention(args.checkpoint, args.text, args.out, args.layer, args.head, args.tag))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from pretrain.tracking import backend

    report, uri = backend().sync(args.run_dir, args.uri)  # MLflow's: the one backend that spools
    if report.created:
        print(f"created MLflow run {report.run_id} at {uri}")
    if report.sent_anything:
        print(f"sent {report.describe()} to MLflow run {report.run_id} at {uri}")
    else:
        print(f"nothing left to send: MLflow run {report.run_id} at {uri} holds all of {args.run_dir}")
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    print(config.to_yaml(), end="")
    from pretrain.config import tracking_uri_origin

    print(f"# tracking.uri comes from {tracking_uri_origin(args.config, args.overrides)}")
    return 0


COMMANDS = {
    "config": cmd_config,
    "data": cmd_data,
    "train": cmd_train,
    "submit": cmd_submit,
    "export": cmd_export,
    "generate": cmd_generate,
    "eval": cmd_eval,
}
