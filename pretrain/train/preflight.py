"""Checks that a training job can start, made before any process is launched.

They are cheap (files and the config, no torch.distributed), so `pretrain train`
runs them in the launching process and a mistake costs no process start-up;
each rank runs them again, since a rank can also be started by another launcher.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.errors import DataError
from data_pipeline.loader import TokenSequences, check_mixture
from data_pipeline.shards import read_manifest
from data_pipeline.tokenizer import file_sha256, load_tokenizer
from pretrain.config import Config
from pretrain.errors import ConfigError
from pretrain.evaluation.tasks import load_tasks
from pretrain.layout import TOKENIZER_NAME
from pretrain.train.resume import fixed_problems, resolve_resume, saved_run


def check_job(config: Config, require_checkpoint: bool) -> tuple[dict, bool]:
    """Raise a clear error if the job cannot start; return the dataset's manifest and whether it resumes."""
    resume = resolve_resume(config.run_dir, require_checkpoint, config.train.max_steps)
    manifest = read_manifest(Path(config.data.output_dir))
    if config.train.init_from:
        check_init_from_tokenizer(config)
    if resume:
        check_resume(config, manifest)
    vocab = manifest["tokenizer"]["vocab_size"]
    if config.model.vocab_size < vocab:
        raise ConfigError(
            f"model.vocab_size = {config.model.vocab_size}: smaller than the dataset's tokenizer ({vocab}); "
            f"set model.vocab_size={vocab} or more"
        )
    check_tokenizer(config, manifest)
    check_split_sizes(config, manifest)
    load_tasks(config.eval.tasks)  # every task file read and checked: a bad one is named before anything starts
    return manifest, resume


def check_resume(config: Config, manifest: dict) -> None:
    """What the checkpoint fixes is refused here, before any process starts, naming each setting."""
    tag, saved = saved_run(config.run_dir)
    fixed_problems(saved["config"], config, f"{config.run_dir} (checkpoint {tag})")
    fingerprint = saved.get("data_fingerprint")
    if fingerprint and fingerprint != manifest["fingerprint"]:
        raise DataError(
            f"{config.data.output_dir}: not the dataset checkpoint {tag} was trained on (fingerprint "
            f"{manifest['fingerprint']}, the checkpoint's {fingerprint}): the data order would not continue; point "
            f"data.output_dir at the run's dataset, or start a new run (another tracking.run_name)"
        )


def check_tokenizer(config: Config, manifest: dict) -> None:
    """A run keeps the tokenizer it started with; shards tokenized by another one would be noise to it."""
    own = config.run_dir / TOKENIZER_NAME
    if own.is_file() and file_sha256(own) != manifest["tokenizer"]["sha256"]:
        raise DataError(
            f"{config.data.output_dir}: the shards were tokenized with another tokenizer than this run's ({own}); "
            f"point data.output_dir at the dataset the run started with, or start a new run"
        )


def check_init_from_tokenizer(config: Config) -> None:
    """Weights trained on one tokenizer's ids read another tokenizer's ids as other words.

    A nanoGPT ckpt.pt holds no tokenizer to compare: the dataset's must be the one it was trained with.
    """
    if Path(config.train.init_from).is_file():
        return
    theirs = Path(config.train.init_from) / TOKENIZER_NAME
    ours = Path(config.data.output_dir) / TOKENIZER_NAME
    if not theirs.is_file():
        raise ConfigError(f"train.init_from = {config.train.init_from}: no {TOKENIZER_NAME} in that folder")
    if load_tokenizer(theirs).get_vocab() != load_tokenizer(ours).get_vocab():
        raise ConfigError(
            f"train.init_from = {config.train.init_from}: its tokenizer is not the one the dataset was built with "
            f"({ours}), so the token ids would mean other words to the model; build the data with "
            f"data.tokenizer.path={theirs}"
        )


def check_split_sizes(config: Config, manifest: dict) -> None:
    """Each split must hold at least one batch of the sequences this config cuts from it."""
    data_dir, train = Path(config.data.output_dir), config.train
    needs = {
        "train": (train.global_batch_size, "lower train.global_batch_size or train.seq_len, or add data"),
        "val": (
            1 if config.eval.batches == "all" else train.micro_batch_size * config.eval.batches * config.dp_size,
            "lower eval.batches or train.seq_len, or raise data.val_fraction",
        ),
    }
    check_mixture(train.mixture, manifest, data_dir)
    for source in train.mixture:  # each is validated on its own sequences: it needs some (or this names it)
        TokenSequences(data_dir, "val", train.seq_len, manifest, {source})
    for split, (needed, fix) in needs.items():
        sources = set(train.mixture) if split == "train" and train.mixture else None
        available = len(TokenSequences(data_dir, split, train.seq_len, manifest, sources))
        if available < needed:
            raise DataError(
                f"{data_dir}: the {split} split has {available} sequences of {train.seq_len + 1} tokens, "
                f"fewer than one batch of {needed}; {fix}"
            )
