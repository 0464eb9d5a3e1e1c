"""From a sharded DeepSpeed checkpoint to an exported model folder (see model_folder.py),
or straight to a model in memory for `pretrain generate` and `pretrain attention`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError
from tokenizers import Tokenizer

from data_pipeline.tokenizer import load_tokenizer
from model import GPT
from pretrain.config import Config
from pretrain.config.schema import with_moved_keys
from pretrain.errors import CheckpointError, CheckpointRefused, ExportError
from pretrain.layout import CHECKPOINTS_DIR, CONFIG_NAME, EXPORT_DIR, MARKER_NAME, TOKENIZER_NAME
from pretrain.weights.checkpoint_files import load_torch_file, verify
from pretrain.weights.checkpoint_folder import candidates, checkpoint_dir, complete_tags
from pretrain.weights.consolidate import consolidated_state_dict
from pretrain.weights.hf_config import HF_CONFIG_NAME, TORCH_CONFIG_NAME, hf_architecture
from pretrain.weights.model_folder import load_model_folder, write_model_folder


@dataclass
class Checkpoint:
    """One complete checkpoint of a run: its folder, and the config and progress it was saved with."""

    run_dir: Path
    tag: str
    config: Config
    step: int
    tokens_seen: int
    mlflow_run_id: str | None

    @property
    def folder(self) -> Path:
        return checkpoint_dir(self.run_dir) / self.tag


def find_checkpoint(path: Path, tag: str | None = None) -> Checkpoint:
    """The checkpoint at `path`, verified: a run folder (its latest checkpoint, or `tag`), or a checkpoint folder in one.

    Its files are checked against the marker's checksums first. A damaged
    latest checkpoint is named and the one before is used; a damaged
    checkpoint asked for by tag is an error.
    """
    run_dir = path
    if (path / MARKER_NAME).is_file() or path.name.startswith("step_"):  # <run>/checkpoints/step_N
        run_dir, tag = path.parent.parent, tag or path.name
    elif path.name == CHECKPOINTS_DIR and not (path / CONFIG_NAME).is_file():
        run_dir = path.parent
    if not (run_dir / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: not a run folder (no {CONFIG_NAME}); pass the folder `pretrain train` printed")
    tags = [tag] if tag else candidates(run_dir)
    folder = checkpoint_dir(run_dir) / (tags[0] if tags else "")
    if not tags or not (folder / MARKER_NAME).is_file():
        complete = ", ".join(complete_tags(checkpoint_dir(run_dir))) or "none"
        raise CheckpointError(
            f"{checkpoint_dir(run_dir)}: no complete checkpoint {tag or ''} (complete ones: {complete})"
        )
    for index, candidate in enumerate(tags):
        try:
            marker = verify(checkpoint_dir(run_dir) / candidate)
        except CheckpointRefused:
            raise  # tampered with: no checkpoint of this folder is to be trusted
        except CheckpointError as err:
            if index + 1 == len(tags):
                raise
            print(f"checkpoint {candidate} is damaged, so the one before is used: {err}", file=sys.stderr)
            continue
        return checkpoint_of(run_dir, candidate, marker)
    raise AssertionError("unreachable: the last candidate raises")


def checkpoint_of(run_dir: Path, tag: str, marker: dict) -> Checkpoint:
    """What a verified checkpoint is: from its marker, or (saved before markers held it) its client state."""
    folder = checkpoint_dir(run_dir) / tag
    state = marker if marker["files"] is not None else client_state(folder)
    saved = state.get("config") or yaml.safe_load((run_dir / CONFIG_NAME).read_text())
    try:
        config = Config.model_validate(with_moved_keys(saved))
    except ValidationError as err:
        raise CheckpointError(
            f"{folder}: the config it was saved with does not load ({err.error_count()} errors)"
        ) from None
    return Checkpoint(
        run_dir=run_dir,
        tag=tag,
        config=config,
        step=state["step"],
        tokens_seen=state["tokens_seen"],
        mlflow_run_id=state.get("mlflow_run_id"),
    )


def client_state(folder: Path) -> dict:
    """What the trainer saved beside the weights (step, tokens seen, MLflow run), from rank 0's model states."""
    rank_zero = sorted(folder.glob("*mp_rank_00_model_states.pt"))  # ZeRO-3: one per data-parallel rank
    if not rank_zero:
        raise CheckpointError(f"{folder}: no model states of rank 0 (mp_rank_00_model_states.pt)")
    # mmap: only the small client state is read, not the module's weights beside it.
    return load_torch_file(rank_zero[0], mmap=True)


def load_checkpoint_model(path: Path, tag: str | None = None) -> tuple[GPT, Checkpoint]:
    """The model of a run's checkpoint (the latest unless `tag`), fp32 on the CPU, and the checkpoint."""
    found = find_checkpoint(path, tag)
    model = GPT(found.config.model)
    model.load_state_dict(consolidated_state_dict(found.config.model, found.folder))  # strict: complete weights
    return model, found


def check_exportable(config: Config, export_format: str) -> None:
    """Refuse, naming the setting, a model that the chosen format cannot reproduce."""
    if export_format != "hf":
        return
    hf_architecture(config.model)  # raises, naming the layers that have no Hugging Face equivalent
    if config.train.document_masking:
        raise ExportError(
            "train.document_masking = true: the model was trained with attention kept inside each document and "
            "positions restarting at each, which Hugging Face's GPT-2 and Llama do not do; export it with "
            "--format torch (for `pretrain generate` and --init-from)"
        )


def export(
    path: Path,
    out_dir: Path | None = None,
    tag: str | None = None,
    export_format: str = "hf",
    dtype: str = "fp32",
    max_shard_size: str = "5GB",
    gate: Callable[[Checkpoint], None] | None = None,
) -> tuple[Path, Checkpoint, dict]:
    """Write the exported folder of a checkpoint (default: <run folder>/export).

    `gate(checkpoint)` may refuse it (by raising) before any weight is read.
    Returns the folder, the checkpoint it came from and what export_info.json says of it.
    """
    found = find_checkpoint(path, tag)
    check_exportable(found.config, export_format)
    if gate:
        gate(found)
    weights = consolidated_state_dict(found.config.model, found.folder)
    info = {
        "run_dir": str(found.run_dir.resolve()),
        "checkpoint_tag": found.tag,
        "step": found.step,
        "tokens_seen": found.tokens_seen,
        "mlflow_run_id": found.mlflow_run_id,
    }
    tokenizer = found.run_dir / TOKENIZER_NAME
    folder, info = write_model_folder(
        weights,
        found.config.model,
        tokenizer,
        out_dir or found.run_dir / EXPORT_DIR,
        info,
        export_format=export_format,
        dtype=dtype,
        max_shard_size=max_shard_size,
    )
    return folder, found, info


def import_nanogpt(
    checkpoint_file: Path, tokenizer: Path, out_dir: Path, export_format: str = "hf", dtype: str = "fp32"
) -> tuple[Path, dict]:
    """Write the exported folder of a nanoGPT `ckpt.pt` (pretrain/weights/nanogpt.py) with `tokenizer`."""
    from pretrain.weights.nanogpt import read_nanogpt_checkpoint

    if not tokenizer.is_file():
        raise ExportError(
            f"--tokenizer {tokenizer}: no such file; nanoGPT keeps no tokenizer in its checkpoint: pass the "
            f"tokenizer.json of the one it was trained with (GPT-2's for its OpenWebText and Shakespeare runs)"
        )
    vocab = load_tokenizer(tokenizer).get_vocab_size()  # a tokenizer.json that `generate` can use, or its error
    config, weights, about = read_nanogpt_checkpoint(checkpoint_file)
    if vocab > config.vocab_size:
        raise ExportError(
            f"--tokenizer {tokenizer}: {vocab} tokens, more than the model's vocab_size ({config.vocab_size}); "
            f"pass the tokenizer it was trained with"
        )
    info = {"imported_from": str(checkpoint_file.resolve()), "source": "nanoGPT"} | about
    return write_model_folder(weights, config, tokenizer, out_dir, info, export_format=export_format, dtype=dtype)


def load_trained_model(path: Path, tag: str | None = None) -> tuple[GPT, Tokenizer]:
    """The model (eval mode, CPU) and tokenizer of an exported folder or of a run folder's checkpoint."""
    if (path / HF_CONFIG_NAME).is_file() or (path / TORCH_CONFIG_NAME).is_file():
        return load_model_folder(path)
    if not (path / CONFIG_NAME).is_file() and not path.name.startswith("step_"):
        raise CheckpointError(
            f"{path}: neither an exported model folder (no {HF_CONFIG_NAME} or {TORCH_CONFIG_NAME}) nor a run "
            f"folder (no {CONFIG_NAME}); pass the folder `pretrain export` or `pretrain train` printed"
        )
    model, found = load_checkpoint_model(path, tag)
    return model.eval(), load_tokenizer(found.run_dir / TOKENIZER_NAME)
