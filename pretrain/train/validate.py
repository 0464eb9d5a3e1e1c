"""What the loop evaluates every eval.interval steps, on the live engine: the validation loss, the downstream
tasks (eval.tasks) and the prompts (eval.prompts).

Every rank takes part: under ZeRO-3 each forward pass gathers the weights
collectively, and under tensor parallelism each rank holds part of every layer.
Each data-parallel rank scores its share of the sequences and task batches;
the scores are the single process's on the same weights (pretrain/evaluation/).
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import torch
import torch.distributed as dist

from data_pipeline.tokenizer import load_tokenizer
from pretrain.config import Config
from pretrain.evaluation.scoring import TaskScorer
from pretrain.evaluation.tasks import load_tasks
from pretrain.evaluation.validation import HeldOut, ValidationLoss, validation_loss
from pretrain.layout import TOKENIZER_NAME
from pretrain.tracking.base import EVALUATIONS_DIR
from pretrain.train.sampling import generate_texts
from pretrain.train.sequence_parallel import whole_sequences


@functools.cache
def dataset_tokenizer(data_dir: str):
    """Read once per process: tasks, eval prompts and the final sample use it."""
    return load_tokenizer(Path(data_dir) / TOKENIZER_NAME)


def task_budget_tokens(config: Config) -> int:
    """Tokens per batch of task requests: a training micro-batch's, and no more than one chunk of the loss, so
    the logits (tokens x vocabulary, which scoring needs whole) take no more memory than in training."""
    micro_batch = config.train.micro_batch_size * config.train.seq_len
    return min(micro_batch, config.train.loss_chunk_tokens) if config.train.loss_chunk_tokens else micro_batch


@contextlib.contextmanager
def in_eval_mode(engine):
    """No dropout while evaluating; back to training after, whatever happened."""
    engine.eval()
    try:
        yield
    finally:
        engine.train()


class LoopEvaluation:
    """This rank's part of each evaluation: its held-out sequences and task batches, prepared once."""

    def __init__(self, config: Config, manifest: dict):
        train = config.train
        self.config = config
        # The ranks of a tensor- or sequence-parallel group score alike.
        self.dp = (config.dp_rank(dist.get_rank()), config.dp_size)
        self.held_out = HeldOut(
            config.data.output_dir,
            manifest,
            train.seq_len,
            train.micro_batch_size,
            config.eval.batches,
            self.dp,
            train.seed,
            sources=list(train.mixture) or None,
            document_ids=train.document_masking,
        )
        self.scorer = None
        if config.eval.tasks:
            tokenizer = dataset_tokenizer(config.data.output_dir)
            tasks = load_tasks(config.eval.tasks)
            self.scorer = TaskScorer(tasks, tokenizer, config.model.max_seq_len, task_budget_tokens(config))

    def validation_loss(self, engine) -> ValidationLoss:
        with in_eval_mode(engine):
            return validation_loss(engine, self.held_out, engine.device)

    def run(self, engine, step: int, tracker) -> tuple[ValidationLoss, dict[str, float]]:
        """The validation loss and every metric of this evaluation; rank 0 logs the per-example scores."""
        with in_eval_mode(engine):
            result = validation_loss(engine, self.held_out, engine.device)
            with whole_sequences(engine.module):  # task sequences come in every length
                scores = self.scorer.score(engine, engine.device, self.dp) if self.scorer else []
        metrics = result.metrics()
        for score in scores:
            metrics |= score.metrics()
        if tracker and scores:
            detail = {score.name: score.to_dict() for score in scores}
            tracker.log_text(json.dumps(detail) + "\n", f"{EVALUATIONS_DIR}/step_{step:08d}.json")
        if self.config.eval.prompts:
            self.log_samples(engine, step, tracker)
        return result, metrics

    def log_samples(self, engine, step: int, tracker) -> None:
        """Continue the fixed evaluation prompts (every rank takes part, as in every forward pass here)."""
        tokenizer = dataset_tokenizer(self.config.data.output_dir)
        with torch.compiler.set_stance("force_eager"):  # a compiled model would recompile for every cache length
            texts = generate_texts(
                engine.module, tokenizer, self.config.eval.prompts, self.config.sample.tokens, seed=0
            )
        if tracker:
            tracker.log_text("\n\n".join(texts) + "\n", f"samples/step_{step:08d}.txt")
