"""Errors a user of `pretrain` can hit: each says what is wrong and how to fix it."""


class PretrainError(Exception):
    """Base of the errors the CLI reports as a message, not a traceback."""


class ConfigError(PretrainError):
    """The configuration is invalid; the message names each key path, value and what is allowed."""


class CheckpointError(PretrainError):
    """A checkpoint is missing, incomplete or does not match the run."""


class ExportError(PretrainError):
    """A model cannot be exported to (or imported from) another format, such as Hugging Face's."""
