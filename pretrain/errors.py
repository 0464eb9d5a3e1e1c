"""Errors a user of `pretrain` can hit: each says what is wrong and how to fix it."""


class PretrainError(Exception):
    """Base of the errors the CLI reports as a message, not a traceback."""


class ConfigError(PretrainError):
    """The configuration is invalid; the message names each key path, value and what is allowed."""


class CheckpointError(PretrainError):
    """A checkpoint is missing, incomplete or does not match the run."""


class CheckpointRefused(CheckpointError):
    """A checkpoint file would run code when loaded: tampered with, not damaged, so no other checkpoint is tried."""


class ExportError(PretrainError):
    """A model cannot be exported to (or imported from) another format, such as Hugging Face's."""


class TrackingError(PretrainError):
    """MLflow refused the run (credentials, permissions), or a spooled run cannot be synced yet."""


class TrainingError(PretrainError):
    """Training cannot go on, for example after too many steps with a non-finite loss."""


def on_every_rank(err: Exception) -> Exception:
    """Mark an error that every rank of a job raises alike, having agreed on it: only rank 0 reports it."""
    err.every_rank = True
    return err
