"""The GPT network: configuration and modules, independent of how it is trained."""

from model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
