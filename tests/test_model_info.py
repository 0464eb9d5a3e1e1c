"""Model presets and `pretrain model info`: counts against the reference models, FLOPs and ZeRO memory."""

import pytest

from model import GPT
from pretrain.cli import main
from pretrain.config.presets import model_preset_names
from pretrain.errors import ConfigError
from pretrain.tools.model_info import load_preset
from pretrain.train.cost import memory_per_rank, mfu, model_cost, peak_bf16_flops

# Parameter counts of the reference models in Hugging Face transformers.
# Our GPT-2 presets pad the vocabulary from 50,257 to 50,304 rows (a multiple of 128): 47 rows of n_embd more.
GPT2_PADDING = 50_304 - 50_257
REFERENCE_PARAMETERS = {
    "gpt2-small": 124_439_808 + GPT2_PADDING * 768,  # GPT2LMHeadModel "gpt2"
    "gpt2-medium": 354_823_168 + GPT2_PADDING * 1024,
    "gpt2-large": 774_030_080 + GPT2_PADDING * 1280,
    "gpt2-xl": 1_557_611_200 + GPT2_PADDING * 1600,
    "llama-1b": 1_100_048_384,  # TinyLlama-1.1B
    "llama-7b": 6_738_415_616,  # Llama-2-7b
}


def test_every_preset_loads_and_the_issue_lists_are_there():
    assert set(model_preset_names()) >= {
        *REFERENCE_PARAMETERS,
        "llama-160m",
        "llama-410m",
        "transformer-base",
        "tiny",
    }
    for name in model_preset_names():
        load_preset(name)


def test_every_preset_pads_its_vocabulary_to_a_multiple_of_128():
    """The head's matrix products run on whole tiles of the GPU's tensor cores only at such sizes."""
    for name in model_preset_names():
        assert load_preset(name).vocab_size % 128 == 0, name


@pytest.mark.parametrize("name, expected", REFERENCE_PARAMETERS.items())
def test_parameter_counts_match_the_reference_models(name, expected):
    assert model_cost(load_preset(name)).parameters == expected


def test_counts_and_flops_follow_the_modules():
    config = load_preset("tiny")
    cost = model_cost(config, seq_len=64)
    model = GPT(config)
    assert cost.parameters == sum(p.numel() for p in model.parameters())
    embeddings = model.embed_tokens.weight.numel() + model.embed_positions.weight.numel()
    assert cost.non_embedding_parameters == cost.parameters - embeddings
    # Tied head: the token table is multiplied once, the position table never.
    matrix = cost.parameters - model.embed_positions.weight.numel()
    assert cost.flops_per_token == 6 * matrix + 12 * config.n_layer * config.n_embd * 64


def test_zero_stages_shard_optimizer_then_gradients_then_weights():
    unsharded = memory_per_rank(1000, "bf16", 0, 4)
    assert unsharded == {"weights": 2000, "gradients": 2000, "optimizer": 12000}
    assert memory_per_rank(1000, "bf16", 1, 4) == {"weights": 2000, "gradients": 2000, "optimizer": 3000}
    assert memory_per_rank(1000, "bf16", 2, 4) == {"weights": 2000, "gradients": 500, "optimizer": 3000}
    # fp32 under ZeRO: DeepSpeed's optimizer keeps a master copy besides Adam's two moments (measured by
    # bench/zero_memory.py); without ZeRO, PyTorch's AdamW holds the moments alone.
    assert memory_per_rank(1000, "fp32", 3, 4) == {"weights": 1000, "gradients": 1000, "optimizer": 3000}
    assert memory_per_rank(1000, "fp32", 0, 4)["optimizer"] == 8000


def test_model_info_command(capsys):
    assert main(["model", "info", "llama-1b", "--zero-stage", "3", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "32 heads (4 key/value)" in out and "parameters: 1,100,048,384" in out
    assert "ZeRO stage 3, 8 data-parallel rank(s)" in out
    assert main(["model", "info", "gpt-5"]) == 1
    assert "model preset 'gpt-5' does not exist; choose one of gpt2-large" in capsys.readouterr().err


def test_a_broken_preset_file_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("n_layer: 2\nn_head: 3\nn_embd: 64\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: not a valid model config \(n_head \(3\) must divide n_embd"):
        load_preset(str(path))


def test_mfu_uses_the_dense_bf16_peak_and_only_for_known_chips():
    # 989 TFLOP/s on an H100 SXM: 1e6 tokens/s at 494.5 GFLOP per token is half of it.
    assert mfu(1e6, 494_500_000, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert mfu(1e6, 494_500_000, "NVIDIA H200") == pytest.approx(0.5)
    assert mfu(1e6, 494_500_000, "NVIDIA H100 80GB HBM3", devices=2) == pytest.approx(0.25)
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    for unknown in ("cpu", "NVIDIA GeForce RTX 4090", ""):
        assert mfu(1e6, 1000, unknown) is None
