"""The GPT network: configuration, modules and generation, independent of how it is trained.

`GPTConfig` imports without torch (the data commands and config checks need
it, not the network); `GPT`, `KVCache` and `generate` are imported on first use.
"""

from model.config import GPTConfig

__all__ = ["GPT", "GPTConfig", "KVCache", "generate"]

_LAZY = {"GPT": "model.gpt", "KVCache": "model.attention", "generate": "model.generation"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
