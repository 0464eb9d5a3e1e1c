"""`export.every`: export (and with `export.registered_model`, register) checkpoints while training runs.

Each export is made by rank 0 from a checkpoint the trainer has just saved,
so it reads complete files; the other ranks wait at their next collective.
The folder is `<run folder>/exports/<tag>`, a Hugging Face folder where the
model has one (pretrain/weights/hf_config.py), else ours (`--format torch`). A
failure to export or register is reported and training goes on: the
checkpoint is there to export by hand.
"""

from __future__ import annotations

from pretrain.config import Config
from pretrain.errors import PretrainError
from pretrain.export.exporter import check_exportable, export
from pretrain.layout import EXPORTS_DIR
from pretrain.tracking import backend
from pretrain.weights.checkpoint_folder import tag_for


def export_format(config: Config) -> str:
    try:
        check_exportable(config, "hf")
    except PretrainError:
        return "torch"
    return "hf"


def due(config: Config, step: int) -> bool:
    return bool(config.export.every) and step % config.export.every == 0


def export_saved_checkpoint(config: Config, step: int, val_loss: float | None) -> str:
    """Export the checkpoint of `step`; return the line that says where it went (or why it did not)."""
    tag = tag_for(step)
    try:
        folder, _, info = export(config.run_dir, config.run_dir / EXPORTS_DIR / tag, tag, export_format(config))
        line = f"exported step {step}: {folder}"
        name = config.export.registered_model
        if name:
            version = backend(config.tracking.backend).register(
                folder, info, name, config.export.aliases, config.tracking.uri, val_loss
            )
            line += f", registered as {name} version {version.version}"
        return line
    except PretrainError as err:
        return f"export of step {step} failed, training goes on: {err}"
