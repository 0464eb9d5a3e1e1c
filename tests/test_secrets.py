"""Secrets stay out of what is written and printed; a Ray job gets them from the shell or a file."""

import json
from pathlib import Path

import pytest
import yaml

from launch.errors import LaunchError
from launch.ray_jobs import job_environment
from pretrain.cli import main
from pretrain.config import load_config
from pretrain.config.secrets import REDACTED, is_secret_key, redact

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
PLANTED = "planted-S3cret-4f1d"


@pytest.mark.parametrize(
    "key",
    ["MLFLOW_TRACKING_PASSWORD", "HF_TOKEN", "RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "apiKey", "db_password"],
)
def test_keys_that_name_a_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["sample_tokens", "loss_chunk_tokens", "tokenizer", "keep_last", "n_kv_heads", "PATH"])
def test_keys_that_do_not(key):
    assert not is_secret_key(key)


def test_redaction_reaches_nested_values_and_url_passwords_and_leaves_the_rest():
    tree = {
        "launch": {"ray": {"env_vars": {"HF_TOKEN": PLANTED, "OMP_NUM_THREADS": "4"}}},
        "data": {"sources": [{"paths": [f"s3://reader:{PLANTED}@bucket/web/"]}]},
        "train": {"sample_tokens": 64},
    }
    redacted = redact(tree)
    assert PLANTED not in json.dumps(redacted)
    assert redacted["launch"]["ray"]["env_vars"] == {"HF_TOKEN": REDACTED, "OMP_NUM_THREADS": "4"}
    assert redacted["data"]["sources"][0]["paths"] == [f"s3://reader:{REDACTED}@bucket/web/"]
    assert redacted["train"] == {"sample_tokens": 64}
    assert tree["launch"]["ray"]["env_vars"]["HF_TOKEN"] == PLANTED  # the process keeps the real value


def test_pretrain_config_prints_no_secret(capsys):
    assert main(["config", "--config", TINY, f"launch.ray.env_vars={{MLFLOW_TRACKING_PASSWORD: {PLANTED}}}"]) == 0
    printed = capsys.readouterr().out
    assert PLANTED not in printed
    assert yaml.safe_load(printed)["launch"]["ray"]["env_vars"] == {"MLFLOW_TRACKING_PASSWORD": REDACTED}


def test_a_ray_dry_run_shows_the_job_environment_without_its_secrets(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", PLANTED)
    code = main(
        [
            "submit",
            "--config",
            TINY,
            "--target",
            "ray",
            "--dry-run",
            "launch.ray.address=http://127.0.0.1:8265",
            f"launch.ray.env_vars={{HF_TOKEN: {PLANTED}, LOG_LEVEL: info}}",
            "launch.ray.pass_env=[WANDB_API_KEY]",
            f"checkpoint.root={tmp_path}",
            f"launch.jobs_dir={tmp_path / 'jobs'}",
            f"data.output_dir={tiny_data}",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    variables = json.loads(printed)["runtime_env"]["env_vars"]
    assert variables["HF_TOKEN"] == variables["WANDB_API_KEY"] == REDACTED and variables["LOG_LEVEL"] == "info"
    assert PLANTED not in printed
    assert all(PLANTED not in path.read_text() for path in (tmp_path / "jobs").iterdir())


def test_a_job_takes_variables_from_the_shell_and_from_a_file(tmp_path):
    env_file = tmp_path / "job.env"
    env_file.write_text(f"# for the cluster\nexport HF_TOKEN='{PLANTED}'\n\nRETRIES=3\n")
    variables = job_environment(
        {"A": "1", "RETRIES": "1"},
        ["MLFLOW_TRACKING_PASSWORD"],
        str(env_file),
        {"MLFLOW_TRACKING_PASSWORD": "from-shell"},
    )
    assert variables == {"A": "1", "RETRIES": "3", "HF_TOKEN": PLANTED, "MLFLOW_TRACKING_PASSWORD": "from-shell"}


def test_a_missing_variable_or_a_bad_line_is_named(tmp_path):
    with pytest.raises(LaunchError, match="launch.ray.pass_env: HF_TOKEN is not set in this shell"):
        job_environment({}, ["HF_TOKEN"], None, {})
    env_file = tmp_path / "job.env"
    env_file.write_text("A=1\nnot a variable\n")
    with pytest.raises(LaunchError, match=r"job.env, line 2: not a KEY=VALUE line"):
        job_environment({}, [], str(env_file), {})


def test_a_config_written_by_pretrain_is_not_resubmitted_with_its_placeholders(tmp_path, capsys):
    config = load_config(TINY, [f"launch.ray.env_vars={{HF_TOKEN: {PLANTED}}}"])
    written = tmp_path / "written.yaml"
    written.write_text(config.to_yaml())
    code = main(
        ["submit", "--config", str(written), "--target", "ray", "--dry-run", "launch.ray.address=http://h:8265"]
    )
    assert code == 1
    assert (
        "launch.ray.env_vars.HF_TOKEN is '<redacted>': this config was written by pretrain" in capsys.readouterr().err
    )
