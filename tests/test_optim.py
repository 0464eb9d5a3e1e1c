"""Learning-rate schedule, weight-decay groups and the generated DeepSpeed config."""

import re

import pytest
import torch

from model import GPT, GPTConfig
from pretrain.config import load_config
from pretrain.train.deepspeed_config import deepspeed_config
from pretrain.train.optim import AdamW, clips_itself, lr_multiplier, param_groups


def schedule(lr: float, max_steps: int, **lr_schedule):
    settings = [f"lr_schedule.{key}={value}" for key, value in lr_schedule.items()]
    config = load_config(overrides=[f"optimizer.lr={lr}", f"train.max_steps={max_steps}", *settings])
    multiplier = lr_multiplier(config)
    return [config.optimizer.lr * multiplier(step) for step in range(config.train.max_steps + 1)]


def test_warmup_then_cosine_to_min_lr():
    lrs = schedule(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, decay="cosine")
    assert lrs[0] == pytest.approx(0.1)  # first step of a 10-step warmup
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_linear_and_constant_decay():
    linear = schedule(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=100, decay="linear")
    assert linear[25] == pytest.approx(0.75)
    assert schedule(lr=0.5, warmup_steps=0, max_steps=10, decay="constant", min_lr=0) == [0.5] * 11


def test_weight_decay_on_matrices_only():
    model = GPT(GPTConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, n_embd=16))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "layers.0.self_attn.q_proj.weight" in decayed
    assert not any("embed" in n or "norm" in n or n.endswith("bias") for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_deepspeed_json_follows_the_config():
    config = load_config(
        overrides=[
            "launch.nproc_per_node=2",
            "train.micro_batch_size=4",
            "train.global_batch_size=32",
            "parallel.zero_stage=2",
            "train.precision=bf16",
            "optimizer.grad_clip=0.5",
        ]
    )
    ds = deepspeed_config(config)
    assert ds["train_batch_size"] == 32
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 4  # 32 / (4 x 2 ranks)
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["bf16"] == {"enabled": True}
    assert ds["gradient_clipping"] == 0.5
    assert "tensor_parallel" not in ds


def test_tensor_parallel_json_splits_every_projection_of_both_model_families_and_nothing_else():
    config = load_config(overrides=["launch.nproc_per_node=4", "parallel.tensor_parallel_size=2"])
    ds = deepspeed_config(config)
    assert ds["tensor_parallel"]["autotp_size"] == 2
    specs = ds["tensor_parallel"]["partition_config"]["layer_specs"]
    assert ds["tensor_parallel"]["partition_config"]["use_default_specs"] is False
    for mlp in ("gelu", "swiglu"):
        model = GPT(GPTConfig(vocab_size=64, max_seq_len=8, n_layer=2, n_head=2, n_embd=16, mlp=mlp))
        for name, _ in model.named_parameters():
            kinds = [s["partition_type"] for s in specs if any(re.match(p, name) for p in s["patterns"])]
            projection = re.search(r"\.(q|k|v|o|gate|up|down)_proj\.weight$", name)
            if projection is None:
                assert kinds == [], name  # embeddings, norms, biases and the head stay whole
            else:
                assert kinds == ["row" if projection.group(1) in ("o", "down") else "column"], name


def test_offload_and_fp16_in_the_deepspeed_json():
    offload = deepspeed_config(load_config(overrides=["parallel.zero_stage=2", "parallel.offload_optimizer=true"]))
    assert offload["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    fp16 = deepspeed_config(load_config(overrides=["train.precision=fp16"]))
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # 0: dynamic loss scaling
    assert not fp16["bf16"]["enabled"]
    autocast = deepspeed_config(load_config(overrides=["train.precision=bf16-autocast"]))
    assert autocast["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert not autocast["bf16"]["enabled"] and not autocast["fp16"]["enabled"]  # fp32 weights and optimizer


def test_own_adamw_skips_a_step_with_non_finite_gradients():
    """The fused kernel reads the non-finite flag on the device: weights, moments and step count stay as they
    were, and `overflow` (which DeepSpeed reads to hold the schedule) says so."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamW([weight], lr=0.1, weight_decay=0.1, max_norm=1.0)
    weight.grad = torch.tensor([1.0, float("nan"), 1.0])
    optimizer.step()
    assert optimizer.overflow and torch.equal(weight.detach(), torch.ones(3))
    state = optimizer.state[weight]
    assert state["step"].item() == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    weight.grad = torch.tensor([1.0, 1.0, 1.0])
    optimizer.step()
    assert not optimizer.overflow and (weight.detach() < 1).all() and state["step"].item() == 1


def test_own_adamw_clips_as_torch_clip_grad_norm_then_adamw():
    """Clipping on the device by the one fused norm: the weights of torch's clip_grad_norm_ followed by
    torch's AdamW, over steps whose gradients are above and below the bound, and the norm DeepSpeed reports."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    reference = [torch.nn.Parameter(param.detach().clone()) for param in ours]
    settings = {"lr": 0.05, "betas": (0.9, 0.95), "weight_decay": 0.1}
    optimizer, expected = AdamW(ours, max_norm=1.0, **settings), torch.optim.AdamW(reference, **settings)
    for scale in (10.0, 0.1, 3.0, 0.5):
        grads = [torch.randn_like(param) * scale for param in ours]
        for param, other, grad in zip(ours, reference, grads, strict=True):
            param.grad, other.grad = grad.clone(), grad.clone()
        norm = torch.nn.utils.clip_grad_norm_(reference, 1.0)
        expected.step()
        optimizer.step()
        assert optimizer._global_grad_norm.item() == pytest.approx(norm.item(), rel=1e-6)
        for param, other in zip(ours, reference, strict=True):
            torch.testing.assert_close(param.detach(), other.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("layout", "ours"),
    [
        (("parallel.zero_stage=0",), True),
        (("parallel.zero_stage=0", "train.precision=bf16-autocast"), True),
        (("parallel.zero_stage=0", "optimizer.grad_clip=0"), False),  # nothing to clip
        (("parallel.zero_stage=0", "parallel.tensor_parallel_size=2", "launch.nproc_per_node=2"), False),
        (("parallel.zero_stage=0", "train.precision=bf16"), False),  # DeepSpeed's bf16 optimizer clips
        (("parallel.zero_stage=1",), False),
    ],
)
def test_the_gradients_are_clipped_once_by_our_adamw_or_by_deepspeed(layout, ours):
    config = load_config(overrides=["optimizer.grad_clip=1.0", *layout])
    assert clips_itself(config) is ours
    assert deepspeed_config(config)["gradient_clipping"] == (0.0 if ours else config.optimizer.grad_clip)
