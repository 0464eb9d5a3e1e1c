"""Our GPT against Hugging Face transformers: same weights, same logits, same greedy tokens, same shapes.

Each Hugging Face model is built from `hf_config_dict` and initialized by
transformers itself; its weights then go through `from_hf_state_dict` into our
GPT (and ours through `to_hf_state_dict` into it). Every parameter is then
perturbed: Hugging Face and we both start norms at 1 and biases at 0, which
would hide two swapped norms or biases.
"""

import dataclasses
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaConfig, LlamaRotaryEmbedding, apply_rotary_pos_emb

from model import GPT, GPTConfig, generate
from model.config import RopeScaling
from model.layers import apply_rope
from model.positions import rope_cos_sin
from pretrain.errors import ExportError
from pretrain.tools.model_info import load_preset
from pretrain.weights.hf_config import gpt_config_from_hf, hf_architecture, hf_config_dict
from pretrain.weights.hf_format import from_hf_state_dict, to_hf_state_dict

SMALL = {"vocab_size": 300, "max_seq_len": 64, "n_embd": 64, "n_head": 4}
LLAMA = {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
CONFIGS = {
    "gpt2": GPTConfig(**SMALL, n_layer=2),
    "gpt2-untied-ffn160": GPTConfig(**SMALL, n_layer=2, tie_embeddings=False, ffn_hidden_size=160, dropout=0.1),
    "llama-gqa-untied": GPTConfig(
        **SMALL, **LLAMA, n_layer=3, n_kv_heads=2, bias=False, tie_embeddings=False, rope_theta=500000.0, norm_eps=1e-6
    ),
    "llama-tied-bias": GPTConfig(**SMALL, **LLAMA, n_layer=2, bias=True, tie_embeddings=True),
}
SEQ_LENS = [1, 7, 33, 64]
TOLERANCE = 1e-4


def hf_model(config: GPTConfig, seed: int = 0) -> torch.nn.Module:
    """A Hugging Face model of this config, fp32, eval mode, with transformers' own random init."""
    torch.manual_seed(seed)
    hf_config = AutoConfig.for_model(**hf_config_dict(config))
    return AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager", dtype=torch.float32).eval()


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Noise on every parameter: no norm at 1 or bias at 0, and logits spread enough for varied greedy tokens."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * 0.2)


def our_model_from(hf: torch.nn.Module, config: GPTConfig) -> GPT:
    model = GPT(config).eval()
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), config))  # strict
    return model


@torch.no_grad()
def max_logit_difference(ours: GPT, hf: torch.nn.Module, config: GPTConfig, seq: int) -> float:
    ids = torch.randint(0, config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(seq))
    return (ours(ids)[0] - hf(ids).logits).abs().max().item()


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_weights_in_our_model_give_hf_logits(name):
    config = CONFIGS[name]
    hf = hf_model(config)
    perturb(hf, seed=1)
    ours = our_model_from(hf, config)
    differences = {seq: max_logit_difference(ours, hf, config, seq) for seq in SEQ_LENS}
    assert max(differences.values()) <= TOLERANCE, differences


@pytest.mark.parametrize("name", CONFIGS)
def test_our_weights_in_hf_model_give_our_logits(name):
    config = CONFIGS[name]
    torch.manual_seed(2)
    ours = GPT(config).eval()  # our own init
    perturb(ours, seed=3)
    hf = hf_model(config)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config))  # strict
    differences = {seq: max_logit_difference(ours, hf, config, seq) for seq in SEQ_LENS}
    assert max(differences.values()) <= TOLERANCE, differences


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dicts_round_trip_exactly(name):
    config = CONFIGS[name]
    hf_state = hf_model(config).state_dict()
    back = to_hf_state_dict(from_hf_state_dict(hf_state, config), config)
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[key], hf_state[key]) for key in hf_state)
    torch.manual_seed(4)
    our_state = GPT(config).state_dict()
    back = from_hf_state_dict(to_hf_state_dict(our_state, config), config)
    assert back.keys() == our_state.keys()
    assert all(torch.equal(back[key], our_state[key]) for key in our_state)
    if config.tie_embeddings:  # saved checkpoints of tied models leave the head out, on both sides
        hf_without_head = {k: v for k, v in hf_state.items() if k != "lm_head.weight"}
        GPT(config).load_state_dict(from_hf_state_dict(hf_without_head, config))  # strict
        without_head = to_hf_state_dict({k: v for k, v in our_state.items() if k != "lm_head.weight"}, config)
        assert torch.equal(without_head["lm_head.weight"], our_state["embed_tokens.weight"])


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_generation_matches_hf(name):
    config = CONFIGS[name]
    hf = hf_model(config)
    perturb(hf, seed=5)
    ours = our_model_from(hf, config)
    for prompt in ([17], [5, 250, 3, 99, 42, 7, 7, 120, 1]):
        expected = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=None,
        )[0, len(prompt) :].tolist()
        assert len(expected) == 20 and len(set(expected)) > 5  # not a degenerate repetition
        assert generate(ours, [prompt], 20, temperature=0) == [expected]


@pytest.mark.parametrize("theta", [10000.0, 500000.0], ids=["theta1e4", "theta5e5"])
def test_rope_matches_hf_llama(theta):
    head_dim, positions = 64, torch.tensor([0, 1, 2, 17, 255, 1023, 2047, 3000, 4000])
    hf_config = LlamaConfig(
        hidden_size=8 * head_dim,
        num_attention_heads=8,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    generator = torch.Generator().manual_seed(6)
    q = torch.randn(2, 8, len(positions), head_dim, generator=generator)
    k = torch.randn(2, 2, len(positions), head_dim, generator=generator)
    hf_cos, hf_sin = LlamaRotaryEmbedding(hf_config)(q, positions.expand(2, -1))
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    # Positions shared by the batch, (seq,), and per row, (batch, seq): both layouts of rope_cos_sin.
    for ours_positions in (positions, positions.expand(2, -1)):
        cos, sin = rope_cos_sin(ours_positions, head_dim, theta)
        # Ours broadcast over (batch, heads, seq, head_dim); Hugging Face's tables are (batch, seq, head_dim).
        for table, hf_table in ((cos, hf_cos), (sin, hf_sin)):
            torch.testing.assert_close(
                table.broadcast_to(q.shape[0], 1, *q.shape[2:])[:, 0], hf_table, atol=1e-5, rtol=0
            )
        torch.testing.assert_close(apply_rope(q, cos, sin), hf_q, atol=1e-5, rtol=0)
        torch.testing.assert_close(apply_rope(k, cos, sin), hf_k, atol=1e-5, rtol=0)


PRESETS = {
    "tiny": "gpt2",
    "transformer-base": "gpt2",  # sinusoidal positions, written as GPT-2's position embeddings
    "gpt2-small": "gpt2",
    "gpt2-medium": "gpt2",
    "gpt2-large": "gpt2",
    "gpt2-xl": "gpt2",
    "llama-160m": "llama",
    "llama-410m": "llama",
    "llama-1b": "llama",
    "llama-7b": "llama",
}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_have_hf_shapes(preset):
    config = load_preset(preset)
    assert hf_architecture(config) == PRESETS[preset]
    with torch.device("meta"):  # shapes only, no memory
        ours = GPT(config)
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_config_dict(config)))
    # Sinusoids are a fixed table of ours, a parameter of GPT-2's.
    table = config.max_seq_len * config.n_embd if config.pos_encoding == "sinusoidal" else 0
    assert ours.num_parameters() + table == sum(p.numel() for p in hf.parameters())
    exported = to_hf_state_dict(ours.state_dict(), config)
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in hf.state_dict().items()}


def test_sinusoidal_positions_export_as_gpt2_position_embeddings():
    """The paper's fixed table becomes GPT-2's (learned) position embedding: same logits, and back as `learned`."""
    config = GPTConfig(**SMALL, n_layer=2, pos_encoding="sinusoidal", dropout=0.1)
    assert hf_architecture(config) == "gpt2"
    torch.manual_seed(7)
    ours = GPT(config).eval()
    perturb(ours, seed=8)
    hf = hf_model(config)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config))  # strict: wpe included
    assert max(max_logit_difference(ours, hf, config, seq) for seq in SEQ_LENS) <= TOLERANCE
    learned = gpt_config_from_hf(hf_config_dict(config), "config.json")
    assert learned.pos_encoding == "learned" and learned.n_embd == config.n_embd
    assert max(max_logit_difference(our_model_from(hf, learned), hf, learned, seq) for seq in SEQ_LENS) <= TOLERANCE


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_config_reads_back_as_the_same_gpt_config(name):
    config = CONFIGS[name]
    back = gpt_config_from_hf(hf_config_dict(config), "config.json")

    def spelled_out(c: GPTConfig) -> GPTConfig:  # defaults that mean the same, written out
        return dataclasses.replace(c, n_kv_heads=c.kv_heads, ffn_hidden_size=c.ffn_hidden)

    assert spelled_out(back) == spelled_out(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mistral"}, "model_type 'mistral' is not supported; supported are gpt2 and llama"),
        ({"hidden_act": "gelu"}, "hidden_act = 'gelu' is not supported; our GPT has 'silu'"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_type = 'longrope' is not supported"),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "mscale": 0.7}},
            "mscale = 0.7 is not supported",
        ),
        ({"intermediate_size": None, "num_hidden_layers": None}, None),
    ],
    ids=["model-type", "activation", "rope-type", "yarn-temperature", "missing-keys"],
)
def test_unsupported_hf_configs_name_the_setting(change, message):
    hf = hf_config_dict(CONFIGS["llama-gqa-untied"]) | change
    if message is None:  # keys left out, not set to None
        hf = {k: v for k, v in hf.items() if k not in change}
        message = "no num_hidden_layers; a llama config.json needs it"
    with pytest.raises(ExportError, match=re.escape(f"x/config.json: {message}")):
        gpt_config_from_hf(hf, "x/config.json")


UNSUPPORTED = {
    "gpt2-without-bias": (GPTConfig(**SMALL, bias=False), "bias=True (not False)"),
    "gpt2-with-gqa": (GPTConfig(**SMALL, n_kv_heads=2), "n_kv_heads=None (not 2)"),
    "rope-with-layernorm": (GPTConfig(**SMALL, pos_encoding="rope", mlp="swiglu"), "norm=rmsnorm (not layernorm)"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_configs_raise_a_helpful_export_error(name):
    config, explanation = UNSUPPORTED[name]
    with pytest.raises(ExportError, match="GPT-2 needs .*; Llama needs ") as raised:
        hf_architecture(config)
    assert explanation in str(raised.value)
    with torch.device("meta"):
        state_dict = GPT(config).state_dict()
    with pytest.raises(ExportError):
        to_hf_state_dict(state_dict, config)


def test_weights_of_another_shape_raise_an_export_error():
    hf_state = hf_model(CONFIGS["llama-gqa-untied"]).state_dict()
    fewer_layers = GPTConfig(**{**CONFIGS["llama-gqa-untied"].__dict__, "n_layer": 2})
    with pytest.raises(ExportError, match="unexpected Hugging Face weights.*layers.2"):
        from_hf_state_dict(hf_state, fewer_layers)


# Stretched past a trained context of 64: the scaled model read at 4 times it and below it, each type of Hugging
# Face's rope_parameters (llama3 with Llama 3.1's own factors, and others; YaRN's temperature on the tables).
ROPE_SCALINGS = {
    "linear": RopeScaling("linear", factor=4.0),
    "dynamic": RopeScaling("dynamic", factor=4.0, original_max_seq_len=64),
    "llama3": RopeScaling("llama3", factor=8.0, original_max_seq_len=64, low_freq_factor=1.0, high_freq_factor=4.0),
    "llama3-2": RopeScaling("llama3", factor=4.0, original_max_seq_len=64, low_freq_factor=2.0, high_freq_factor=8.0),
    "yarn": RopeScaling("yarn", factor=4.0, original_max_seq_len=64),
}


@pytest.mark.parametrize("name", ROPE_SCALINGS)
def test_rope_scaling_gives_hf_logits_past_the_trained_context(name):
    config = dataclasses.replace(
        CONFIGS["llama-gqa-untied"], max_seq_len=256, rope_theta=10000.0, rope_scaling=ROPE_SCALINGS[name]
    )
    hf = hf_model(config)
    perturb(hf, seed=1)
    ours = our_model_from(hf, config)
    for seq in (48, 256):
        assert max_logit_difference(ours, hf, config, seq) <= TOLERANCE, seq
    plain = our_model_from(hf, dataclasses.replace(config, rope_scaling=None))
    ids = torch.randint(0, config.vocab_size, (1, 256))
    with torch.no_grad():  # the scaling did change the positions (dynamic only past 64)
        assert (plain(ids)[0] - ours(ids)[0]).abs().max() > 1e-2
    back = gpt_config_from_hf(hf_config_dict(config), "config.json")
    assert back.rope_scaling == config.rope_scaling and back.max_seq_len == config.max_seq_len
