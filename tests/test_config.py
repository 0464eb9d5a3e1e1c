"""Config loading, `extends`, overrides, and one clear error for each kind of invalid config."""

import json
from pathlib import Path

import pytest

from pretrain.cli.parser import EPILOG
from pretrain.config import Config, load_config, save_config, tracking_uri_origin
from pretrain.config.schema import MOVED_KEYS, with_moved_keys
from pretrain.errors import ConfigError
from pretrain.tracking.run_info import layout_tag
from pretrain.train.deepspeed_config import deepspeed_config
from pretrain.train.resume import differences

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    config = load_config()
    assert config == Config()
    assert config.world_size == 1


def test_demo_config_extends_base():
    config = load_config(CONFIGS / "demo.yaml")
    assert config.launch.nproc_per_node == 2  # from demo.yaml
    assert config.train.precision == "fp32"  # from base.yaml
    assert config.model.n_embd == 128
    assert config.grad_accum_steps == 1


def test_child_file_overrides_parent_key_by_key(tmp_path):
    write(tmp_path / "parent.yaml", "model:\n  n_layer: 2\n  n_head: 2\noptimizer:\n  lr: 0.1\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nmodel:\n  n_layer: 3\n")
    config = load_config(child)
    assert (config.model.n_layer, config.model.n_head, config.optimizer.lr) == (3, 2, 0.1)


def test_overrides_are_typed_by_the_schema():
    config = load_config(
        CONFIGS / "demo.yaml",
        [
            "optimizer.lr=3e-4",
            "model.n_layer=6",
            "tracking.run_name=123",
            "data.sources=[{name: web, paths: [a.jsonl, b.txt]}]",
            "model.bias=false",
        ],
    )
    assert config.optimizer.lr == pytest.approx(3e-4)
    assert config.model.n_layer == 6
    assert config.tracking.run_name == "123"
    assert [(s.name, s.paths) for s in config.data.sources] == [("web", ["a.jsonl", "b.txt"])]
    assert config.model.bias is False


def test_readme_override_example_is_valid():
    config = load_config(CONFIGS / "demo.yaml", ["optimizer.lr=3e-4", "model.n_layer=6", "launch.nproc_per_node=1"])
    assert (config.optimizer.lr, config.model.n_layer, config.world_size, config.grad_accum_steps) == (3e-4, 6, 1, 2)


def test_saved_config_loads_back_identical(tmp_path):
    config = load_config(CONFIGS / "demo.yaml", ["train.max_steps=70"])
    assert load_config(save_config(config, tmp_path / "resolved.yaml")) == config


def error_of(path=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.learning_rate=0.1", ["optimizer.learning_rate: unknown key; allowed here: lr, weight_decay"]),
        ("train.max_step=9", ["train.max_step: unknown key; did you mean train.max_steps? allowed here: seed,"]),
        ("model.layers=4", ["model.layers: unknown key; did you mean model.n_layer?"]),
        ("train.max_steps=lots", ["train.max_steps = 'lots'", "valid integer"]),
        ("parallel.zero_stage=4", ["parallel.zero_stage = '4'", "less than or equal to 3"]),
        ("model.pos_encoding=alibi", ["model.pos_encoding = 'alibi'", "'learned', 'sinusoidal' or 'rope'"]),
        ("train.loss_chunk_tokens=-1", ["train.loss_chunk_tokens = '-1'", "greater than or equal to 0"]),
    ],
    ids=[
        "unknown key",
        "misspelled key",
        "unknown model key",
        "wrong type",
        "out of range",
        "not an allowed value",
        "negative chunk",
    ],
)
def test_invalid_value_names_path_value_and_what_is_allowed(override, expected):
    message = error_of(overrides=[override])
    for fragment in expected:
        assert fragment in message


def test_a_setting_that_left_train_is_named_at_its_new_key(tmp_path):
    """train.lr, train.eval_interval, ... moved to sections of their own: the error says where, in a file or an override."""
    old = write(tmp_path / "old.yaml", "train:\n  lr: 0.1\n  eval_interval: 5\n  export_register: gpt\n")
    message = error_of(old, ["train.sample_prompt=ROMEO:"])
    for moved, now in [
        ("train.lr", "optimizer.lr"),
        ("train.eval_interval", "eval.interval"),
        ("train.export_register", "export.registered_model"),
        ("train.sample_prompt", "sample.prompt"),
    ]:
        assert f"{moved}: this setting is now {now}; rename it" in message


def test_a_config_saved_before_the_split_reads_as_it_was_meant():
    """A checkpoint's or run folder's config from before the split: every moved value lands at its new key, so
    the run still exports, generates and resumes, and a resume sees no change."""
    config = load_config(
        CONFIGS / "demo.yaml", ["optimizer.lr=3e-4", "eval.prompts=[def]", "export.registered_model=gpt"]
    )
    saved = config.to_dict()
    for old, new in MOVED_KEYS.items():
        section, name = new.split(".")
        saved["train"][old.removeprefix("train.")] = saved[section].pop(name)
    for section in ("optimizer", "lr_schedule", "eval", "sample", "export"):
        assert not saved.pop(section)
    assert Config.model_validate(with_moved_keys(saved)) == config
    assert differences(saved, config) == []


def test_heads_must_divide_width():
    message = error_of(overrides=["model.n_embd=100", "model.n_head=3"])
    assert "  model: n_head (3) must divide n_embd (100)" in message
    assert "allowed n_head values: [1, 2, 4, 5, 10, 20, 25, 50, 100]" in message


def test_tensor_parallel_must_divide_world_size():
    message = error_of(overrides=["launch.nproc_per_node=2", "parallel.tensor_parallel_size=3", "model.n_head=12"])
    assert "parallel.tensor_parallel_size = 3: must divide the world size" in message


def test_tensor_parallel_must_divide_heads():
    message = error_of(
        overrides=["launch.nproc_per_node=4", "parallel.tensor_parallel_size=4", "model.n_head=6", "model.n_embd=48"]
    )
    assert "parallel.tensor_parallel_size = 4: must divide model.n_head (6)" in message


def test_sequence_parallel_ranks_read_the_same_sequences_and_deepspeed_counts_each_rank():
    config = load_config(
        overrides=["launch.nproc_per_node=4", "parallel.sequence_parallel_size=2", "train.global_batch_size=16"]
    )
    assert (config.dp_size, config.grad_accum_steps) == (2, 1)  # 16 sequences = 8 per rank x 2 data-parallel ranks
    assert [config.dp_rank(rank) for rank in range(4)] == [0, 0, 1, 1]
    # To DeepSpeed all 4 ranks are data-parallel, each with a micro-batch of its own slices.
    assert deepspeed_config(config)["train_batch_size"] == 32
    assert layout_tag(config) == "dp2-sp2-tp1-zero1"  # the run's tag in MLflow


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["launch.nproc_per_node=3"], "parallel.sequence_parallel_size = 2: must divide the world size"),
        (
            ["train.seq_len=63", "model.max_seq_len=64"],
            "parallel.sequence_parallel_size = 2: must divide train.seq_len (63)",
        ),
        (["model.n_head=3", "model.n_embd=48"], "parallel.sequence_parallel_size = 2: must divide model.n_head (3)"),
        (["model.n_head=4", "model.n_kv_heads=1"], "must divide model.n_kv_heads (1)"),
        (["parallel.tensor_parallel_size=2"], "does not combine with tensor parallelism"),
        (
            [
                "model.pos_encoding=rope",
                "model.rope_scaling.type=dynamic",
                "model.rope_scaling.factor=2",
                "model.rope_scaling.original_max_seq_len=64",
            ],
            "dynamic RoPE scaling scales by the furthest position a forward pass sees",
        ),
    ],
    ids=["world", "seq-len", "heads", "kv-heads", "tensor-parallel", "dynamic-rope"],
)
def test_sequence_parallelism_refuses_what_does_not_split_evenly(overrides, expected):
    base = ["launch.nproc_per_node=2", "parallel.sequence_parallel_size=2", "model.n_head=2", "train.seq_len=64"]
    assert expected in error_of(overrides=[*base, *overrides])


def test_batch_sizes_must_multiply_out():
    message = error_of(overrides=["launch.nproc_per_node=2", "train.micro_batch_size=4", "train.global_batch_size=12"])
    assert (
        "train.global_batch_size = 12: must be a multiple of train.micro_batch_size (4) x data-parallel size (2)"
        in message
    )


def test_all_problems_reported_at_once():
    message = error_of(overrides=["train.seq_len=4096", "lr_schedule.min_lr=1", "optimizer.lr=0.1"])
    assert "train.seq_len = 4096: must not exceed model.max_seq_len (1024)" in message
    assert "lr_schedule.min_lr = 1.0: must not exceed optimizer.lr (0.1)" in message


def test_vocab_must_hold_the_tokenizer():
    message = error_of(overrides=["model.vocab_size=1000", "data.tokenizer.vocab_size=2000"])
    assert "model.vocab_size = 1000: must be at least data.tokenizer.vocab_size (2000)" in message


def test_bad_override_syntax():
    assert "write it as key.path=value" in error_of(overrides=["optimizer.lr"])


@pytest.mark.parametrize(
    "override",
    ["train.mixture=!!python/object/apply:os.system [touch pwned]", "train.mixture={web: [1, 2}"],
    ids=["python-tag", "malformed"],
)
def test_an_override_that_is_not_valid_yaml_is_a_config_error_naming_it(tmp_path, override, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"override {key}: its value is not valid YAML \(.*\); quote it"):
        load_config(overrides=[override])
    assert not (tmp_path / "pwned").exists()


def test_override_into_a_value_is_refused():
    assert "optimizer.lr = {'x': '1'}: Input should be a valid number" in error_of(overrides=["optimizer.lr.x=1"])
    assert "override 'optimizer.lr.x=1': lr is not a section" in error_of(CONFIGS / "demo.yaml", ["optimizer.lr.x=1"])


def test_missing_file_and_bad_yaml(tmp_path):
    assert "config file not found" in error_of(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "model: [unclosed\n")
    assert f"{bad}: not valid YAML" in error_of(bad)
    assert "top level must be a mapping" in error_of(write(tmp_path / "list.yaml", "- 1\n"))


def test_extends_loop_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    assert "loops back" in error_of(tmp_path / "a.yaml")


def test_unknown_key_in_a_source_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"data.sources.0.bogus: unknown key; allowed here: name, paths, format"):
        load_config(overrides=["data.sources=[{name: web, paths: [a.jsonl], bogus: 1}]"])


def test_a_model_preset_replaces_the_inherited_model_and_keys_beside_it_win(tmp_path):
    # base.yaml sets learned positions and LayerNorm; the Llama preset's RoPE and RMSNorm must survive that.
    job = write(
        tmp_path / "llama.yaml",
        f"extends: {CONFIGS / 'base.yaml'}\nmodel:\n  preset: llama-160m\n  max_seq_len: 512\ntrain:\n  seq_len: 512\n",
    )
    config = load_config(job)
    assert (config.model.pos_encoding, config.model.norm, config.model.mlp) == ("rope", "rmsnorm", "swiglu")
    assert config.model.ffn_hidden_size == 3072 and config.model.vocab_size == 32000
    assert config.model.max_seq_len == 512
    # A later override changes one key of it; the saved, resolved config holds no preset key.
    config = load_config(job, ["model.n_layer=2"])
    assert config.model.n_layer == 2 and "preset" not in config.to_dict()["model"]


def test_a_preset_override_replaces_the_model_and_other_overrides_apply_on_top():
    config = load_config(CONFIGS / "demo.yaml", ["model.max_seq_len=256", "model.preset=gpt2-small"])
    assert config.model.n_layer == 12 and config.model.vocab_size == 50304
    assert config.model.max_seq_len == 256  # given before the preset, still applied after it


def test_an_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(ConfigError, match="model preset 'gpt-5' does not exist; choose one of gpt2-large, gpt2-medium"):
        load_config(CONFIGS / "demo.yaml", ["model.preset=gpt-5"])


def test_tensor_parallel_must_divide_kv_heads_and_ffn_width():
    message = error_of(
        overrides=[
            "launch.nproc_per_node=4",
            "parallel.tensor_parallel_size=4",
            "model.n_head=8",
            "model.n_embd=64",
            "model.n_kv_heads=2",
            "model.ffn_hidden_size=66",
        ]
    )
    assert "parallel.tensor_parallel_size = 4: must divide model.n_kv_heads (2)" in message
    assert "parallel.tensor_parallel_size = 4: must divide the FFN width (66)" in message


def test_optimizer_offload_needs_zero_and_is_refused_with_tensor_parallelism():
    assert "parallel.offload_optimizer = true: needs parallel.zero_stage 1, 2 or 3" in error_of(
        overrides=["parallel.zero_stage=0", "parallel.offload_optimizer=true"]
    )
    message = error_of(
        overrides=["launch.nproc_per_node=2", "parallel.tensor_parallel_size=2", "parallel.offload_optimizer=true"]
    )
    assert "not supported with tensor parallelism" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("sample.prompt=ROMEO:", "ROMEO:"),  # YAML would make it a mapping
        ('sample.prompt="ROMEO:"', "ROMEO:"),  # quotes are removed, not kept in the value
        ("sample.prompt=' ROMEO: '", " ROMEO: "),  # ... and keep the spaces inside them
        ("sample.prompt=[1, 2]", "[1, 2]"),
        ("sample.prompt=key: value # not a comment", "key: value # not a comment"),
        ("tracking.run_name=007", "007"),
        (
            "tracking.run_name=!!python/object/apply:os.system [touch pwned]",
            "!!python/object/apply:os.system [touch pwned]",
        ),
        ("model.pos_encoding=rope", "rope"),
    ],
)
def test_an_override_sets_any_text_of_a_text_setting_as_written(override, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = override.partition("=")[0]
    section, name = key.split(".")
    assert getattr(getattr(load_config(overrides=[override]), section), name) == expected
    assert not (tmp_path / "pwned").exists()


def test_null_unsets_an_optional_text_setting_and_help_states_the_quoting_rule():
    assert load_config(overrides=["train.init_from=null", "export.registered_model=~"]).train.init_from is None
    for example in ("sample.prompt=ROMEO:", "quote", "null"):
        assert example in EPILOG


def test_mlflow_tracking_uri_in_the_environment_is_used_unless_the_config_sets_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert load_config(CONFIGS / "demo.yaml").tracking.uri == "http://127.0.0.1:5999"
    assert tracking_uri_origin(CONFIGS / "demo.yaml") == "the environment (MLFLOW_TRACKING_URI)"
    own = write(
        tmp_path / "own.yaml", "extends: " + str(CONFIGS / "demo.yaml") + "\ntracking: {uri: sqlite:///own.db}\n"
    )
    assert load_config(own).tracking.uri == "sqlite:///own.db"
    assert tracking_uri_origin(own) == f"the config ({own})"
    override = ["tracking.uri=sqlite:///mine.db"]
    assert load_config(own, override).tracking.uri == "sqlite:///mine.db"
    assert tracking_uri_origin(own, override) == "an override (tracking.uri=...)"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert load_config(CONFIGS / "demo.yaml").tracking.uri == "sqlite:///mlflow.db"
    assert tracking_uri_origin(CONFIGS / "demo.yaml").startswith("the default")


def test_pretrain_config_says_where_tracking_uri_came_from(capsys, monkeypatch):
    from pretrain.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert main(["config", "--config", str(CONFIGS / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "uri: http://127.0.0.1:5999" in out
    assert out.rstrip().endswith("# tracking.uri comes from the environment (MLFLOW_TRACKING_URI)")


def test_a_shipped_config_is_found_by_name_and_a_missing_one_names_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped ones are found all the same
    assert load_config("demo") == load_config(CONFIGS / "demo.yaml")
    with pytest.raises(ConfigError, match=r"nonesuch: config file not found; .* shipped config: base, demo, tiny"):
        load_config("nonesuch")


def exported_config(folder: Path, **model) -> Path:
    """A folder holding only the config.json of an export: all the config loader reads of train.init_from."""
    from model import GPTConfig
    from pretrain.weights.hf_config import hf_config_dict

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config_dict(GPTConfig(**model))))
    return folder


LLAMA_64 = {"vocab_size": 512, "max_seq_len": 64, "n_layer": 2, "n_head": 2, "n_embd": 64}
LLAMA_64 |= {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False}


def test_rope_scaling_with_init_from_extends_the_context_the_folder_was_trained_at(tmp_path):
    """Continued pretraining at a longer sequence: the folder's model, trained at 64 tokens, reads 4 times that
    with its positions stretched as Llama 3's are; the config's own model section (GPT-2's positions) is not it."""
    folder = exported_config(tmp_path / "short", **LLAMA_64)
    overrides = [f"train.init_from={folder}", "model.rope_scaling.type=llama3", "model.rope_scaling.factor=4"]
    config = load_config("configs/tiny.yaml", [*overrides, "train.seq_len=256"])
    assert config.model.max_seq_len == 256 and config.model.pos_encoding == "rope"
    scaling = config.model.rope_scaling
    assert (scaling.type, scaling.factor, scaling.original_max_seq_len) == ("llama3", 4.0, 64)
    assert load_config("configs/tiny.yaml", [f"train.init_from={folder}"]).model.rope_scaling is None


@pytest.mark.parametrize(
    ("model", "overrides", "message"),
    [
        (
            {**LLAMA_64, "pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True},
            [],
            "only rotary positions stretch; the folder's model has learned positions",
        ),
        (LLAMA_64, ["model.rope_scaling.factor=0.5"], "rope_scaling.factor must be at least 1, got 0.5"),
        (LLAMA_64, ["model.rope_scaling.scale=4"], "no setting 'scale'; rope_scaling's settings are type, factor"),
    ],
    ids=["learned-positions", "factor-below-one", "unknown-key"],
)
def test_a_context_extension_that_cannot_be_is_named(tmp_path, model, overrides, message):
    folder = exported_config(tmp_path / "short", **model)
    extension = ["model.rope_scaling.type=linear", "model.rope_scaling.factor=2", *overrides]
    with pytest.raises(ConfigError) as error:
        load_config("configs/tiny.yaml", [f"train.init_from={folder}", *extension])
    assert "model.rope_scaling = {" in str(error.value) and message in str(error.value)
