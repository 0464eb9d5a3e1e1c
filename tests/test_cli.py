"""The `pretrain` command: help for every stage, and errors as messages, not tracebacks."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pretrain.cli import main
from pretrain.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = [["data", "build"], ["train"], ["export"], ["generate"], ["submit"], ["config"]]


def test_console_script_alone_prints_help_listing_every_stage_and_exits_0():
    script = Path(sys.executable).parent / "pretrain"
    result = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    for command in ("data", "train", "export", "generate", "submit", "jobs"):
        assert command in result.stdout
    assert "optimizer.lr=3e-4" in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c))
def test_every_subcommand_has_help_with_config_and_overrides(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "KEY=VALUE" in out


def test_submit_and_jobs_help_name_every_target_and_action(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    out = capsys.readouterr().out
    assert "{local,multinode,slurm,ray}" in out and "--dry-run" in out and "docs/launching.md" in out
    with pytest.raises(SystemExit):
        main(["jobs", "--help"])
    out = capsys.readouterr().out
    assert all(action in out for action in ("list", "status", "logs", "cancel"))


def test_config_prints_the_resolved_config_that_loads_back(tmp_path, capsys):
    assert main(["config", "--config", str(ROOT / "configs" / "demo.yaml"), "optimizer.lr=3e-4"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    config = load_config(printed)
    assert config == load_config(ROOT / "configs" / "demo.yaml", ["optimizer.lr=3e-4"])
    assert "rope_theta: 10000.0" in printed.read_text()  # defaults are spelled out


def test_invalid_config_is_one_message_and_exit_1(capsys):
    code = main(["train", "--config", str(ROOT / "configs" / "demo.yaml"), "model.n_head=3", "train.bogus=1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("pretrain train: error: invalid config")
    assert "  model: n_head (3) must divide n_embd (128)" in err
    assert "train.bogus: unknown key" in err
    assert "Traceback" not in err


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_generate_from_a_folder_that_is_neither_export_nor_run_says_what_to_pass(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path)]) == 1
    assert (
        f"{tmp_path}: neither an exported model folder (no config.json or model_config.json) nor a run "
        "folder (no config.yaml); pass the folder `pretrain export` or `pretrain train` printed"
    ) in capsys.readouterr().err


def test_generate_on_a_trained_run_never_exported_uses_its_checkpoint_and_says_how_to_export(
    two_rank_run, tiny_data, capsys
):
    run = ["--config", str(ROOT / "configs" / "tiny.yaml"), f"data.output_dir={tiny_data}"]
    run += [f"checkpoint.root={Path(two_rank_run['work']) / 'runs'}", "tracking.run_name=layout-2-1"]
    assert main(["generate", *run, "--prompt", "def", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("def")
    assert "generating from the run's latest checkpoint; `pretrain export` with the same --config makes" in err
    assert main(["generate", *run, "tracking.run_name=never-trained"]) == 1
    assert "no trained run here (no checkpoints/ nor export/); train it first" in capsys.readouterr().err


def test_more_processes_than_cores_or_gpus_is_warned_of(monkeypatch):
    from launch.local import oversubscription

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert oversubscription(2) is None
    assert oversubscription(6) == (
        "launch.nproc_per_node = 6: more processes than this host's 2 CPU cores; the ranks take turns on them and "
        "the job runs slower than with --nproc 2"
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert oversubscription(4) is None
    assert "more processes than this host's 4 GPU(s), which ranks would have to share; use --nproc 4" in (
        oversubscription(8) or ""
    )


def test_export_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["export", "--run-dir", str(tmp_path)]) == 1
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err


def test_train_without_data_says_how_to_build_it(tmp_path, capsys):
    code = main(["train", f"data.output_dir={tmp_path / 'none'}", f"checkpoint.root={tmp_path}"])
    assert code == 1
    assert "no manifest; build the dataset first with `pretrain data build`" in capsys.readouterr().err


def test_resume_without_a_checkpoint(tmp_path, capsys):
    code = main(["submit", "--resume", "--config", str(ROOT / "configs" / "demo.yaml"), f"checkpoint.root={tmp_path}"])
    assert code == 1
    assert "no checkpoint to resume from; run without --resume" in capsys.readouterr().err


def test_bad_data_source_is_named_before_ray_starts(tmp_path, capsys):
    code = main(
        [
            "data",
            "build",
            f"data.sources=[{{name: web, paths: [{tmp_path}/missing.jsonl]}}]",
            f"data.output_dir={tmp_path}/out",
        ]
    )
    assert code == 1
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_overrides_may_follow_options(capsys):
    code = main(["train", "--resume", "train.bogus=1", "--config", str(ROOT / "configs" / "demo.yaml"), "model.x=2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "train.bogus: unknown key" in err and "model.x: unknown key" in err


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--fast"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --fast" in capsys.readouterr().err


def test_generate_continues_a_batch_of_prompts_from_an_exported_folder(tiny_model_folder, capsys):
    options = ["generate", "--model", str(tiny_model_folder), "--temperature", "0", "--max-new-tokens", "5"]
    assert main([*options, "--prompt", "the model reads"]) == 0
    alone = capsys.readouterr().out
    assert main([*options, "--prompt", "the model reads", "--prompt", "a token", "--top-p", "0.9"]) == 0
    batch = capsys.readouterr().out
    # Greedy: the first prompt continues the same way alone and in a batch (top-p does not change the argmax).
    assert batch.startswith(alone[:-1] + "\n\n")
    assert batch[len(alone) + 1 :].startswith("a token")


def test_generate_refuses_a_prompt_that_fills_the_context(tiny_model_folder, capsys):
    long_prompt = " ".join(["the model reads a token"] * 20)
    assert main(["generate", "--model", str(tiny_model_folder), "--prompt", long_prompt]) == 1
    assert "and the model's context (max_seq_len) is 32: shorten the prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_an_installed_package_carries_the_shipped_configs_and_presets(tmp_path):
    """`pip install .`, then `pretrain ... --config demo` outside a checkout: the YAML files are package data."""
    import os
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: building a wheel writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "outputs", "mlruns", "*.db", "__pycache__"))
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    installed = tmp_path / "installed"
    zipfile.ZipFile(next(wheels.glob("pretrain-*.whl"))).extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The unpacked wheel comes first on the path, before this checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = subprocess.run(
        [sys.executable, "-c", "from pretrain.config.presets import shipped_configs_dir; print(shipped_configs_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert where.stdout.strip() == str(installed / "pretrain" / "configs"), where.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "pretrain.cli", "config", "--config", "demo", "model.preset=llama-160m"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    config = yaml.safe_load(shown.stdout)
    assert config["tracking"]["experiment"] == "demo" and config["model"]["vocab_size"] == 32000
