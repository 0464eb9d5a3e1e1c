"""`pretrain eval`: a checkpoint or an exported folder scored on tasks and on a dataset's whole validation split.

In one process, on the GPU where there is one: the checkpoint's full weights
are gathered as `pretrain export` gathers them (any ZeRO stage, any tensor-
parallel degree), so the scores are those the training loop computes on the
same weights across its ranks. The results go to a JSON file and to MLflow:
a run's checkpoint adds them to its training run at the checkpoint's step
(where `pretrain export --register --require` reads them), an exported folder
gets an evaluation run of its own, tagged with the training run it came from.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from data_pipeline.layout import write_atomically
from data_pipeline.shards import read_manifest
from data_pipeline.tokenizer import load_tokenizer
from pretrain.config import Config
from pretrain.errors import PretrainError
from pretrain.evaluation.scoring import TaskScorer
from pretrain.evaluation.tasks import load_tasks
from pretrain.evaluation.validation import ALL, HeldOut, validation_loss
from pretrain.export.exporter import Checkpoint, load_checkpoint_model, load_trained_model
from pretrain.layout import MANIFEST_NAME, TOKENIZER_NAME
from pretrain.tracking import backend
from pretrain.tracking.base import Evaluation
from pretrain.weights.model_folder import INFO_NAME


@dataclass
class Scored:
    """What `pretrain eval` found: the results file's content and the metrics it logs."""

    results: dict
    metrics: dict[str, float]
    checkpoint: Checkpoint | None


def evaluate(
    config: Config,
    model_dir: Path | None,
    run_path: Path | None,
    tag: str | None,
    task_files: list[str],
    data_dir: Path | None,
    batch_tokens: int,
) -> Scored:
    """Score an exported folder (`model_dir`) or a run's checkpoint (`run_path`, else config's run folder)."""
    checkpoint = None
    if model_dir is not None:
        model, tokenizer = load_trained_model(model_dir)
        source, tokenizer_file = str(model_dir), model_dir / TOKENIZER_NAME
    else:
        model, checkpoint = load_checkpoint_model(run_path or config.run_dir, tag)
        source, tokenizer_file = str(checkpoint.folder), checkpoint.run_dir / TOKENIZER_NAME
        tokenizer = load_tokenizer(tokenizer_file)
        task_files = task_files or checkpoint.config.eval.tasks
        data_dir = data_dir or own_dataset(checkpoint)
    tasks = load_tasks(task_files)
    if not tasks and data_dir is None:
        raise PretrainError("nothing to evaluate: give --task FILE (repeatable), or --data DIR for a validation loss")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    results: dict = {"model": source, "step": checkpoint.step if checkpoint else None, "tasks": {}}
    metrics: dict[str, float] = {}
    if tasks:
        scores = TaskScorer(tasks, tokenizer, model.config.max_seq_len, batch_tokens).score(model, device)
        results["tasks"] = {score.name: score.to_dict() for score in scores}
        metrics |= {key: value for score in scores for key, value in score.metrics().items()}
    if data_dir is not None:
        held_out = whole_validation_split(data_dir, tokenizer_file, checkpoint, model.config.max_seq_len)
        loss = validation_loss(model, held_out, device)
        results["validation"] = {"data": str(data_dir), **loss.metrics()}
        metrics |= loss.metrics()
    return Scored(results, metrics, checkpoint)


def own_dataset(checkpoint: Checkpoint) -> Path | None:
    """The run's dataset, or None (saying so) when it is no longer where the run read it."""
    data_dir = Path(checkpoint.config.data.output_dir)
    if (data_dir / MANIFEST_NAME).is_file():
        return data_dir
    print(
        f"no dataset at {data_dir}, where the run trained: no validation loss (--data DIR names one)", file=sys.stderr
    )
    return None


def whole_validation_split(data_dir: Path, tokenizer_file: Path, checkpoint: Checkpoint | None, max_seq_len: int):
    """Every validation sequence of `data_dir`, cut as the run trained (its seq_len, mixture, masking)."""
    manifest = read_manifest(data_dir)
    if load_tokenizer(data_dir / TOKENIZER_NAME).get_vocab() != load_tokenizer(tokenizer_file).get_vocab():
        raise PretrainError(
            f"{data_dir}: its shards were tokenized with another tokenizer than the model's ({tokenizer_file}), "
            f"so its loss would mean nothing; give --data the dataset the model was trained on"
        )
    if checkpoint is None:
        return HeldOut(data_dir, manifest, max_seq_len, 8, ALL)
    train = checkpoint.config.train
    return HeldOut(
        data_dir,
        manifest,
        train.seq_len,
        train.micro_batch_size,
        ALL,
        seed=train.seed,
        sources=list(train.mixture) or None,
        document_ids=train.document_masking,
    )


def write_results(scored: Scored, out: Path) -> Path:
    return write_atomically(out, json.dumps(scored.results, indent=1) + "\n")


def log_results(scored: Scored, config: Config, uri: str, out: Path, model_dir: Path | None) -> str:
    """Into the checkpoint's training run at its step, or an evaluation run of its own; the run's id."""
    checkpoint = scored.checkpoint
    if checkpoint is not None:
        evaluation = Evaluation(
            scored.metrics, checkpoint.step, out, checkpoint.config.tracking.experiment, checkpoint.mlflow_run_id
        )
        if checkpoint.mlflow_run_id is None:
            raise PretrainError(f"{checkpoint.folder}: the checkpoint names no MLflow run; the results are in {out}")
        return backend(checkpoint.config.tracking.backend).log_evaluation(uri, evaluation)
    info_file = model_dir / INFO_NAME
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    evaluation = Evaluation(
        scored.metrics,
        info.get("step", 0),
        out,
        config.tracking.experiment,
        source_run_id=info.get("mlflow_run_id"),
        model=str(model_dir.resolve()),
    )
    return backend(config.tracking.backend).log_evaluation(uri, evaluation)


def describe(scored: Scored) -> str:
    """The console's summary: one line per task, and the validation loss."""
    lines = []
    for name, task in scored.results["tasks"].items():
        lines.append(f"{name}: acc {task['acc']:.4f}  acc_norm {task['acc_norm']:.4f}  ({task['n']} examples)")
    validation = scored.results.get("validation")
    if validation:
        lines.append(
            f"validation loss {validation['val_loss']:.4f} (ppl {validation['val_perplexity']:.2f}) over "
            f"{validation['val_sequences']:,} sequences, {validation['val_tokens']:,} tokens of {validation['data']}"
        )
        lines += [f"  {key}: {value:.4f}" for key, value in validation.items() if key.endswith("/loss")]
    return "\n".join(lines)
