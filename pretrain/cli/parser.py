"""The `pretrain` command line: every subcommand, option and help text; nothing runs here."""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.targets import TARGET_NAMES
from pretrain.export.gate import parse_requirement

EPILOG = (
    "Overrides: dotted key paths after the options, e.g. optimizer.lr=3e-4 model.n_layer=4. A text setting takes "
    "the text as it is (sample.prompt=ROMEO:); quote the whole argument for the shell when it holds "
    "spaces ('sample.prompt=To be'), and put quotes inside it to keep spaces at its ends "
    "('sample.prompt=\" ROMEO\"'). Lists and mappings are YAML (train.mixture={web: 0.7, code: 0.3}); "
    "null unsets an optional setting."
)


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="YAML config file (may `extends:` another); defaults when omitted")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optimizer.lr=3e-4")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain",
        description="Pretrain GPT-style language models: data -> train -> export -> generate.",
        epilog=EPILOG,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="build tokenized Arrow shards from raw text (Ray Data)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = _with_config(
        data_commands.add_parser(
            "build",
            help="read, clean, deduplicate, tokenize and shard data.sources (resumes a killed build)",
            description="Build Arrow shards, tokenizer.json, rejects.jsonl and manifest.json in data.output_dir. "
            "Run it again after a crash to resume: finished work is kept and the result is byte-identical. "
            "Run it again after a finished build: nothing is done unless a setting, the tokenizer or an input "
            "file (its size or modification time; its bytes with data.inputs_changed_by=content) changed, "
            "or --force is given.",
            epilog="Reference: docs/data.md. " + EPILOG,
        )
    )
    build.add_argument("--ray-address", help="an existing Ray cluster (default: RAY_ADDRESS, else in-process Ray)")
    build.add_argument("--verbose", action="store_true", help="also Ray's own log lines and Ray Data's progress")
    build.add_argument(
        "--force", action="store_true", help="rebuild even when the dataset is up to date with its inputs and settings"
    )
    cloze = _with_config(
        data_commands.add_parser(
            "cloze",
            help="make a cloze task from the validation split, for eval.tasks and `pretrain eval`",
            description="Each example cuts a held-out document and asks which of --choices continuations of the "
            "same number of tokens is its own; the others come from other held-out documents. Written as a JSON "
            "lines task (docs/evaluation.md).",
            epilog="Reference: docs/evaluation.md. " + EPILOG,
        )
    )
    cloze.add_argument("--dir", type=Path, help="dataset folder (default: data.output_dir)")
    cloze.add_argument("--out", type=Path, help="the task file (default: <dataset folder>/cloze.jsonl)")
    cloze.add_argument("--examples", type=int, default=500, help="examples, at most one per document (500)")
    cloze.add_argument("--choices", type=int, default=4, help="choices per example, one of them right (4)")
    cloze.add_argument("--tokens", type=int, default=2, help="tokens in each choice (2)")
    cloze.add_argument("--seed", type=int, default=0)
    for action, help_text in (
        ("inspect", "totals, per-source counts, length and token-frequency summaries, decoded samples"),
        ("verify", "check every shard against the manifest: presence, size, schema and checksum"),
    ):
        checker = _with_config(data_commands.add_parser(action, help=help_text, epilog=EPILOG))
        checker.add_argument("--dir", type=Path, help="dataset folder (default: data.output_dir)")

    _add_train(commands)

    _add_export(commands)

    _add_eval(commands)
    _add_generate(commands)
    _add_attention(commands)
    _add_runs(commands)

    model = commands.add_parser("model", help="model presets: size, FLOPs and memory")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    info = model_commands.add_parser(
        "info", help="parameters, FLOPs per token and memory per rank of a preset (configs/model/)"
    )
    info.add_argument("preset", help="a preset name (gpt2-small, llama-1b, ...) or a YAML file of model settings")
    info.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    info.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=1)
    info.add_argument("--world-size", type=int, default=1, help="data-parallel ranks")
    info.add_argument("--seq-len", type=int, help="sequence length for the attention FLOPs (default: max_seq_len)")

    _with_config(
        commands.add_parser(
            "config", help="print the fully resolved config: every key, with defaults filled in", epilog=EPILOG
        )
    )

    _add_submit(commands)
    _add_jobs(commands)
    return parser


def _add_train(commands) -> None:
    train = _with_config(
        commands.add_parser(
            "train",
            help="train a GPT with DeepSpeed, tracked in MLflow",
            description="Train on launch.nproc_per_node processes: ZeRO (parallel.zero_stage), tensor parallelism "
            "(parallel.tensor_parallel_size), sequences split across ranks (parallel.sequence_parallel_size), "
            "checkpoints every checkpoint.every_steps. A run folder that holds a "
            "checkpoint is continued from its latest intact one, exactly, with this config's learning rates, "
            "schedule and intervals; settings the checkpoint fixes (the model, the parallel layout, the batch "
            "shape) are refused before anything starts. SIGTERM saves a checkpoint and exits 0; Ctrl-C too, "
            "exiting 130 (twice: at once).",
            epilog='Reference: docs/training.md ("When things go wrong"), docs/parallelism.md, docs/security.md. '
            + EPILOG,
        )
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint to continue from (without it, a run folder that holds one is continued anyway)",
    )
    train.add_argument("--nproc", type=int, metavar="N", help="processes on this machine (launch.nproc_per_node)")
    train.add_argument(
        "--init-from",
        metavar="FOLDER",
        help="start from an exported folder's weights (train.init_from): `pretrain export` output of either "
        "format, a Hugging Face GPT-2 or Llama folder, or a nanoGPT ckpt.pt; its architecture replaces the model "
        "section",
    )
    train.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="K",
        help="this host's rank in a multi-node job (0 hosts the rendezvous)",
    )


def _add_submit(commands) -> None:
    submit = _with_config(
        commands.add_parser(
            "submit",
            help="send the training job (or the data build) to launch.target: local, multinode, slurm or ray",
            description="local: this machine, in the foreground or --detach'ed. multinode: this host's part of a "
            "job over launch.nnodes hosts (run it on each, with --node-rank). slurm: an sbatch job rendered from "
            "launch.slurm. ray: a job on the Ray cluster at launch.ray.address (Ray Train workers). Submitted jobs "
            "are recorded in launch.jobs_dir and followed with `pretrain jobs`.",
            epilog="Reference: docs/launching.md. " + EPILOG,
        )
    )
    submit.add_argument("--target", choices=TARGET_NAMES, help="where the job runs (launch.target)")
    submit.add_argument(
        "--stage", choices=["train", "data"], default="train", help="what runs: training (default) or the data build"
    )
    submit.add_argument(
        "--detach", action="store_true", help="local: return at once; a training job logs to <run folder>/job.log"
    )
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be submitted (the command, sbatch script or Ray request), submit nothing",
    )
    submit.add_argument("--resume", action="store_true", help="require a checkpoint to continue from")
    submit.add_argument("--nproc", type=int, metavar="N", help="processes per node (launch.nproc_per_node)")
    submit.add_argument(
        "--init-from", metavar="FOLDER", help="start from an exported folder's weights (train.init_from)"
    )
    submit.add_argument("--node-rank", type=int, default=0, metavar="K", help="multinode: this host's rank")


def _add_jobs(commands) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="follow submitted jobs: list, status, logs, cancel (state from Slurm, Ray or the local process)",
        epilog="Reference: docs/launching.md.",
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    for action, help_text in (
        ("list", "every recorded job, with its state now"),
        ("status", "one job: its state, config, run folder, MLflow run and final losses"),
        ("logs", "the job's output"),
        ("cancel", "stop the job (Slurm and local jobs get SIGTERM first, so the ranks save a checkpoint)"),
    ):
        parser = actions.add_parser(action, help=help_text)
        if action != "list":
            parser.add_argument("job_id", metavar="JOB_ID", help="as `pretrain jobs list` shows it")
        parser.add_argument("--jobs-dir", type=Path, help="where jobs are recorded (default: launch.jobs_dir)")
        parser.add_argument("--config", help="a config whose launch.jobs_dir to read")
        if action == "logs":
            parser.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
            parser.add_argument(
                "-f", "--follow", action="store_true", help="go on printing the output as it grows, until the job ends"
            )


def _add_export(commands) -> None:
    export = _with_config(
        commands.add_parser(
            "export",
            help="turn a checkpoint into a Hugging Face (or our own) model folder; register it in MLflow",
            description="Gather the full weights of a checkpoint (any ZeRO stage, any tensor-parallel degree, in "
            "one process) and write a folder that transformers' AutoModelForCausalLM and AutoTokenizer load "
            "(--format hf: GPT-2 or Llama), or our own parameter names (--format torch), which `pretrain train "
            "--init-from` starts from. --register logs the folder to the training run and registers a new version "
            "of a model in MLflow's registry; --from-registry fetches one back.",
            epilog="Reference: docs/export.md. " + EPILOG,
        )
    )
    export.add_argument(
        "--checkpoint",
        "--run-dir",
        dest="checkpoint",
        type=Path,
        help="a run folder (its latest checkpoint) or one of its checkpoint folders "
        "(default: checkpoint.root/tracking.run_name)",
    )
    export.add_argument("--tag", help="checkpoint tag, e.g. step_00001000 (default: the latest complete one)")
    export.add_argument("--out", type=Path, help="output folder (default: <run folder>/export)")
    export.add_argument(
        "--format",
        choices=["hf", "torch"],
        default="hf",
        help="hf (default): a Hugging Face folder; torch: our parameter names (any model; for --init-from)",
    )
    export.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="of the saved weights")
    export.add_argument(
        "--max-shard-size", default="5GB", help="hf: larger weights are split into shards with an index (5GB)"
    )
    registry = export.add_mutually_exclusive_group()
    registry.add_argument("--register", metavar="NAME", help="register the folder as a new version of model NAME")
    export.add_argument(
        "--alias", action="append", default=[], help="with --register: an alias for the new version (repeatable)"
    )
    export.add_argument(
        "--require",
        action="append",
        default=[],
        type=parse_requirement,
        metavar="METRIC>=X",
        help="with --register: register only if the run logged METRIC at the checkpoint's step and it passes, "
        "e.g. eval/cloze/acc>=0.3 or eval/loss<=3.2 (repeatable)",
    )
    registry.add_argument(
        "--from-nanogpt",
        metavar="CKPT",
        type=Path,
        help="import a nanoGPT ckpt.pt into --out instead (with --tokenizer: nanoGPT saves none); docs/export.md",
    )
    export.add_argument(
        "--tokenizer", type=Path, help="with --from-nanogpt: the tokenizer.json the model was trained with"
    )
    registry.add_argument(
        "--from-registry",
        metavar="NAME@ALIAS",
        help="fetch a registered version (NAME@ALIAS, NAME/VERSION or NAME for the latest) into --out",
    )


def _add_eval(commands) -> None:
    evaluate = _with_config(
        commands.add_parser(
            "eval",
            help="score a checkpoint or an exported model on tasks (accuracy) and on a validation split (loss)",
            description="Score multiple-choice and cloze tasks (--task: JSON lines or lm-evaluation-harness YAML) "
            "by log-likelihood, as lm-evaluation-harness does, and the loss over every sequence of a validation "
            "split. A run's checkpoint (the latest, or --tag) is scored on its own dataset and eval.tasks unless "
            "told otherwise, and the scores join its MLflow run at the checkpoint's step; an exported folder "
            "(--model) gets an MLflow run of its own. Per-example log-likelihoods go to --out.",
            epilog="Reference: docs/evaluation.md. " + EPILOG,
        )
    )
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint",
        "--run-dir",
        dest="checkpoint",
        type=Path,
        help="a run folder (its latest checkpoint) or one of its checkpoint folders "
        "(default: checkpoint.root/tracking.run_name)",
    )
    source.add_argument("--model", type=Path, help="an exported folder (`pretrain export` output) instead of a run")
    evaluate.add_argument("--tag", help="with a run: the checkpoint tag, e.g. step_00001000 (default: the latest)")
    evaluate.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="FILE",
        help="a task file, .jsonl or lm-eval .yaml (repeatable; default for a run: its eval.tasks)",
    )
    evaluate.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="a dataset whose whole validation split to score (default: a run's own; none for --model)",
    )
    evaluate.add_argument(
        "--out", type=Path, default=Path("evaluation.json"), help="the results file (default: ./evaluation.json)"
    )
    evaluate.add_argument(
        "--batch-tokens", type=int, default=4096, metavar="N", help="tokens per batch of task requests (4096)"
    )
    evaluate.add_argument("--no-mlflow", action="store_true", help="write the results file only")
    evaluate.add_argument(
        "--lm-eval-tasks",
        type=Path,
        metavar="DIR",
        help="instead of scoring: write each --task as an lm-evaluation-harness task in DIR and print the "
        "lm_eval command that scores an export on them",
    )


def _add_generate(commands) -> None:
    generate = _with_config(
        commands.add_parser(
            "generate", help="continue prompts with a trained model (exported or a checkpoint)", epilog=EPILOG
        )
    )
    generate.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        type=Path,
        help="an exported model folder, or a run folder (its latest checkpoint; default: <run folder>/export)",
    )
    generate.add_argument("--tag", help="with a run folder: the checkpoint tag (default: the latest)")
    generate.add_argument(
        "--prompt", action="append", help="text to continue; repeat for a batch (default: sample.prompt)"
    )
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    generate.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens; 0: all")
    generate.add_argument("--top-p", type=float, help="sample among the most likely tokens up to this probability")
    generate.add_argument("--seed", type=int, default=0)


def _add_attention(commands) -> None:
    attention = commands.add_parser(
        "attention",
        help="heatmaps of the attention weights of every layer and head for a text",
        description="Run a trained model on a text and write its attention weights: one PNG per layer "
        "(all heads), a large PNG of --layer/--head, and attention.npz; print that head's matrix.",
        epilog="Reference: docs/attention.md.",
    )
    attention.add_argument(
        "--checkpoint", type=Path, required=True, help="an exported model folder or a run folder (its checkpoint)"
    )
    attention.add_argument("--text", required=True, help="the text to look at, e.g. 'I love artificial intelligence.'")
    attention.add_argument("--out", type=Path, default=Path("attention"), help="output folder (default: ./attention)")
    attention.add_argument("--layer", type=int, default=0, help="layer whose head is printed and drawn large")
    attention.add_argument("--head", type=int, default=0, help="head of --layer to print and draw large")
    attention.add_argument("--tag", help="checkpoint tag of a run folder (default: the latest)")


def _add_runs(commands) -> None:
    runs = commands.add_parser("runs", help="MLflow runs of run folders: send what was spooled while offline")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    sync = runs_commands.add_parser(
        "sync",
        help="send a run folder's MLflow spool to the server (creates the run if it never was)",
        description="Replay RUN_DIR/mlflow_spool, written while the MLflow server could not be reached, "
        "in the order it was logged. Safe to repeat: what was sent is recorded and is not sent twice.",
        epilog="Reference: docs/tracking.md.",
    )
    sync.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="the run folder (checkpoint.root/tracking.run_name)"
    )
    sync.add_argument("--uri", help="MLflow tracking URI (default: tracking.uri of RUN_DIR/config.yaml)")
