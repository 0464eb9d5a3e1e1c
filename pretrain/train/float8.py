"""FP8 training: the blocks' Linear layers through torchao's float8, the rest of the model as it was.

torchao's `Float8Linear` keeps its weight in the training precision (fp32 or
bf16, so the optimizer, checkpoints and exports see an ordinary Linear) and
casts the weight, the input and the output gradient to float8 with dynamic
scales for each of the three matrix products of a layer's forward and
backward. Its gain comes from the H100/H200 FP8 tensor cores and from
`torch.compile` fusing the casts; without FP8 hardware torchao emulates the
products (correct, slow), which is how the CPU tests check it.

What is converted: never the output head, whose logits feed the loss (and
is often tied to the embedding), nor a layer whose sizes are not multiples
of 16 (the FP8 GEMM's requirement); with `layers: auto`, only the layers
large enough for the casts to pay, by torchao's thresholds (the project
does not guess its own).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from pretrain.config.schema import Float8Config

HEAD = "lm_head"


def float8_hardware() -> bool:
    """Whether this process's GPU multiplies in FP8: compute capability 8.9 (Ada) or 9.0+ (Hopper)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def convert_to_float8(model: nn.Module, settings: Float8Config) -> list[str]:
    """Swap the chosen Linear layers of `model` for torchao's Float8Linear, in place; return their names."""
    torchao_float8, _ = _import_torchao_float8()
    config = dataclasses.replace(
        torchao_float8.Float8LinearConfig.from_recipe_name(settings.recipe), emulate=not float8_hardware()
    )
    if settings.layers == "auto":
        chosen = torchao_float8.float8_linear_utils._auto_filter_for_recipe(settings.recipe, filter_fqns=[HEAD])
    else:
        chosen = _every_block_linear
    torchao_float8.convert_to_float8_training(model, config=config, module_filter_fn=chosen)
    return converted_layers(model)


def converted_layers(model: nn.Module) -> list[str]:
    _, float8_linear = _import_torchao_float8()
    return [name for name, module in model.named_modules() if isinstance(module, float8_linear)]


def float8_summary(model: nn.Module, settings: Float8Config) -> str:
    """One line for the run's console: what multiplies in float8, and on what."""
    names = converted_layers(model)
    on = "FP8 tensor cores" if float8_hardware() else "emulated: this device has no FP8"
    if not names:
        return (
            f"float8 ({settings.recipe}): no Linear layer is large enough to gain (train.float8.layers=auto); "
            f"train.float8.layers=all converts them all"
        )
    return f"float8 ({settings.recipe}, {on}): {len(names)} Linear layers, e.g. {', '.join(names[:3])}"


def _every_block_linear(module: nn.Module, name: str) -> bool:
    if not isinstance(module, nn.Linear) or name.split(".")[-1] == HEAD:
        return False
    return all(size % 16 == 0 for size in module.weight.shape)


def _import_torchao_float8():
    """torchao, imported without its start-up noise: warnings that kernels for other platforms (its CUDA
    extensions on a CPU build) did not load, and a deprecation from torch about its own Enum registration;
    neither concerns float8 training."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.float8
        import torchao.float8.float8_linear_utils
        from torchao.float8.float8_linear import Float8Linear
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return torchao.float8, Float8Linear
