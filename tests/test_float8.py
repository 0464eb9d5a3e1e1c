"""FP8 training through torchao's float8, checked on the CPU in torchao's emulation: which layers convert, the
gradients against bf16's, and a configuration that cannot hold it refused. A float8 run's losses, its checkpoint
and its exact continuation: tests/test_layouts.py."""

import pytest
import torch

from model import GPT
from model.loss import LMHead
from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.train.float8 import convert_to_float8, float8_summary

BLOCK_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def float8_config(*overrides: str, path: str | None = "configs/tiny.yaml"):
    return load_config(path, ["train.float8.enabled=true", *overrides])


def test_every_block_linear_converts_but_never_the_head_or_the_embedding():
    config = float8_config("train.float8.layers=all")
    model = GPT(config.model)
    converted = convert_to_float8(model, config.train.float8)
    mlp = [
        f"mlp.{name}" for name, module in model.layers[0].mlp.named_children() if isinstance(module, torch.nn.Linear)
    ]
    expected = [f"layers.{i}.{name}" for i in range(config.model.n_layer) for name in (*BLOCK_LINEARS, *mlp)]
    assert sorted(converted) == sorted(expected)
    assert type(model.lm_head) is LMHead and model.lm_head.weight is model.embed_tokens.weight  # still tied
    assert set(model.state_dict()) == set(GPT(config.model).state_dict())  # checkpoints see plain Linears


@pytest.mark.parametrize(
    ("preset", "recipe", "per_block"),
    [
        # tensorwise gains where K > 4096 or N > 1024 (torchao's H100 thresholds): not the 2048 x 256 k and v
        (
            "llama-1b",
            "tensorwise",
            ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
        ),
        ("llama-1b", "rowwise", ["mlp.gate_proj", "mlp.up_proj"]),  # rowwise needs N > 4096 here
        ("gpt2-small", "tensorwise", ["mlp.up_proj"]),
        ("gpt2-small", "rowwise", []),  # 768 wide: nothing gains
    ],
)
def test_auto_converts_only_the_layers_large_enough_to_gain(preset, recipe, per_block):
    """The presets' own layers under torchao's size thresholds; the head, large as it is, never."""
    config = float8_config(f"model.preset={preset}", f"train.float8.recipe={recipe}", path=None)
    with torch.device("meta"):  # shapes only: a 1B model's initialization takes minutes on a CPU
        model = GPT(config.model)
    converted = convert_to_float8(model, config.train.float8)
    assert sorted(converted) == sorted(f"layers.{i}.{name}" for i in range(config.model.n_layer) for name in per_block)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_gives_the_bf16_loss_and_gradients_within_float8s_accuracy(recipe):
    """One forward and backward of the tiny model in bf16, with and without float8 (emulated): the loss within
    1%, each converted layer's gradient pointing the same way (cosine similarity), and not bit for bit equal."""
    config = float8_config("train.float8.layers=all", f"train.float8.recipe={recipe}")
    torch.manual_seed(0)
    bf16 = GPT(config.model).to(torch.bfloat16)
    float8 = GPT(config.model).to(torch.bfloat16)
    float8.load_state_dict(bf16.state_dict())
    converted = convert_to_float8(float8, config.train.float8)
    ids = torch.randint(0, config.model.vocab_size, (4, 33))
    losses = {}
    for name, model in (("bf16", bf16), ("float8", float8)):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        losses[name] = loss.item()
    assert losses["float8"] == pytest.approx(losses["bf16"], rel=1e-2)
    assert losses["float8"] != losses["bf16"]
    plain, fp8 = dict(bf16.named_parameters()), dict(float8.named_parameters())
    for name in converted:
        expected, got = plain[f"{name}.weight"].grad.float(), fp8[f"{name}.weight"].grad.float()
        assert torch.nn.functional.cosine_similarity(expected.flatten(), got.flatten(), dim=0) > 0.98, name


@pytest.mark.parametrize(
    "overrides",
    [
        ["launch.nproc_per_node=2", "parallel.tensor_parallel_size=2", "parallel.zero_stage=1"],
        ["train.precision=fp16"],
    ],
    ids=["tensor-parallel", "fp16"],
)
def test_float8_is_refused_where_it_cannot_train(overrides):
    with pytest.raises(ConfigError) as error:
        float8_config(*overrides)
    assert "train.float8.enabled = true: trains with train.precision fp32, bf16 or bf16-autocast" in str(error.value)


def test_the_run_says_what_multiplies_in_float8_and_when_nothing_does():
    config = float8_config()
    model = GPT(config.model)
    convert_to_float8(model, config.train.float8)  # layers: auto, and the tiny model's are all too small
    assert "no Linear layer is large enough to gain (train.float8.layers=auto)" in float8_summary(
        model, config.train.float8
    )
    config = float8_config("train.float8.layers=all", "train.float8.recipe=rowwise")
    convert_to_float8(model, config.train.float8)
    summary = float8_summary(model, config.train.float8)
    assert summary.startswith("float8 (rowwise, emulated: this device has no FP8): 12 Linear layers, e.g. layers.0.")
