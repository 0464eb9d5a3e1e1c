"""The GPT network: configuration and modules, independent of how it is trained.

`GPTConfig` imports without torch (the data commands and config checks need
it, not the network); `GPT` is imported on first use.
"""

from model.config import GPTConfig

__all__ = ["GPT", "GPTConfig"]


def __getattr__(name: str):
    if name == "GPT":
        from model.gpt import GPT

        return GPT
    raise AttributeError(f"module 'model' has no attribute {name!r}")
