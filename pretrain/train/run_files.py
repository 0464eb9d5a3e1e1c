"""What a run writes into its folder before it trains: the resolved config (and its history), the DeepSpeed JSON
and the tokenizer. The names are pretrain/layout.py's.

config.yaml is written by rank 0 once it holds the lock and the checkpoint
it resumes from has loaded, so a resume that fails leaves the folder as it
was: still the config of its checkpoints.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from pretrain.config import Config, save_config
from pretrain.layout import CONFIG_HISTORY, CONFIG_NAME, DEEPSPEED_CONFIG_NAME, TOKENIZER_NAME, write_atomically


def write_config(config: Config, resumed_at: int | None) -> Path:
    """Write config.yaml; a different one written before is kept in config_history/, named by the step it ran to."""
    path = config.run_dir / CONFIG_NAME
    if resumed_at is not None and path.is_file() and path.read_text() != config.to_yaml():
        history = config.run_dir / CONFIG_HISTORY
        history.mkdir(exist_ok=True)
        kept = history / f"config.until_step_{resumed_at:08d}.yaml"
        for again in itertools.count(2):  # resumed at this step before: after a fall back, or a failed resume
            if not kept.exists():
                break
            kept = history / f"config.until_step_{resumed_at:08d}.{again}.yaml"
        shutil.copyfile(path, kept)
    return save_config(config, path)


def write_run_files(config: Config, data_dir: Path, deepspeed_json: dict, resumed_at: int | None) -> list[Path]:
    """The run folder's record of what runs: the resolved config, the DeepSpeed JSON and the tokenizer."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = write_atomically(run_dir / DEEPSPEED_CONFIG_NAME, json.dumps(deepspeed_json, indent=2) + "\n")
    tokenizer_path = write_atomically(run_dir / TOKENIZER_NAME, (data_dir / TOKENIZER_NAME).read_bytes())
    return [write_config(config, resumed_at), ds_path, tokenizer_path]
