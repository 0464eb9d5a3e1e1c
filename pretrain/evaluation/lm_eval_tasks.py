"""Tasks written out for lm-evaluation-harness, so that its own `hf` model scores an export on the same examples.

`pretrain export` writes a folder transformers loads unchanged, so lm-eval needs
no adapter for the model: only the tasks, as its YAML task format over a local
JSON lines file. Each task becomes `<name>.yaml` and `<name>.jsonl` in one
folder, which `lm_eval --include_path` reads. The examples are those
pretrain/evaluation/tasks.py read, so lm-eval and `pretrain eval` score the same
requests, with the same delimiter, and their accuracies agree (tests/test_evaluation.py).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from data_pipeline.layout import write_atomically
from pretrain.evaluation.tasks import load_tasks


def write_lm_eval_tasks(task_files: list[str] | list[Path], out_dir: Path) -> list[str]:
    """`<name>.yaml` and `<name>.jsonl` in `out_dir` for each task file; the task names."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for task in load_tasks(task_files):
        data = out_dir / f"{task.name}.jsonl"
        rows = (
            {"context": example.context, "choices": list(example.choices), "gold": example.gold}
            for example in task.examples
        )
        write_atomically(data, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        spec = {
            "task": task.name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": task.delimiter,
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
        write_atomically(out_dir / f"{task.name}.yaml", yaml.safe_dump(spec, sort_keys=False))
        names.append(task.name)
    return names


def lm_eval_command(model_dir: Path, names: list[str], tasks_dir: Path) -> str:
    """The lm_eval command line that scores the export in `model_dir` on the tasks written to `tasks_dir`."""
    return shlex.join(
        [
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={Path(model_dir).resolve()},dtype=float32",
            "--tasks",
            ",".join(names),
            "--include_path",
            str(Path(tasks_dir).resolve()),
            "--batch_size",
            "8",
            "--output_path",
            "lm_eval_results",
        ]
    )
