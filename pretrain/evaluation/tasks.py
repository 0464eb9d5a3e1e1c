"""Downstream tasks from files on disk: multiple-choice and cloze examples, checked line by line.

Two formats, both scored the same way (pretrain/evaluation/scoring.py):

- JSON lines, one example a line: `{"context": str, "choices": [str, ...],
  "gold": int}`; other fields are allowed and ignored. Each choice is scored
  as written right after the context, so a choice that starts a new word
  starts with its space (" Paris"), as in lm-evaluation-harness's requests.
  The task is named after the file.
- lm-evaluation-harness's YAML task format, its `multiple_choice` output type
  over local JSON lines files (`dataset_path: json`, `dataset_kwargs.data_files`
  relative to the YAML file or absolute): `doc_to_text`, `doc_to_choice` and
  `doc_to_target` as a field name, a literal or a Jinja2 template, and
  `target_delimiter` (default " ") put between the context and each choice.
  Templates render in Jinja2's sandbox, and `!function` (Python code named by
  the file) is refused: a task file someone hands you runs no code.

A bad file fails with its path, line and field named, before any scoring.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pretrain.errors import PretrainError

FORMAT = 'one JSON object a line: {"context": "...", "choices": ["...", "..."], "gold": 0}'
MIN_CHOICES = 2


class TaskError(PretrainError):
    """A task file is missing, malformed, or asks for what pretrain does not do (code, downloads)."""


@dataclass(frozen=True)
class Example:
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class Task:
    name: str
    path: Path
    examples: tuple[Example, ...]
    delimiter: str = ""  # put between the context and each choice (lm-eval's target_delimiter; none in JSON lines)


def load_task(path: str | Path) -> Task:
    """The task in a .jsonl file or an lm-evaluation-harness .yaml file; TaskError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such task file; give a JSON lines file ({FORMAT}) or an lm-eval YAML task")
    if path.suffix in (".yaml", ".yml"):
        return _yaml_task(path)
    return Task(path.stem, path, tuple(_example(doc, path, line) for line, doc in _json_lines(path)))


def load_tasks(paths: list[str] | list[Path]) -> list[Task]:
    """Every task of `paths`, each name once (two files of one name would log to the same metrics)."""
    tasks, seen = [], {}
    for path in paths:
        task = load_task(path)
        if task.name in seen:
            raise TaskError(
                f"{path}: task {task.name!r} is also {seen[task.name]}; their scores would share eval/{task.name}/*, "
                f"so rename one file (or its `task:`)"
            )
        seen[task.name] = path
        tasks.append(task)
    return tasks


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    docs = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                docs.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise TaskError(
                    f"{path}:{number}: not JSON ({err.msg}, column {err.colno}); expected {FORMAT}"
                ) from None
    if not docs:
        raise TaskError(f"{path}: holds no examples; expected {FORMAT}")
    return docs


def _example(doc: Any, path: Path, line: int) -> Example:
    where = f"{path}:{line}"
    if not isinstance(doc, dict):
        raise TaskError(f"{where}: a {type(doc).__name__}, not an object; expected {FORMAT}")
    for field in ("context", "choices", "gold"):
        if field not in doc:
            raise TaskError(f"{where}: field {field!r} is missing; expected {FORMAT}")
    context, choices, gold = doc["context"], doc["choices"], doc["gold"]
    if not isinstance(context, str) or not context.strip():
        raise TaskError(f"{where}: field 'context' must be a string with text in it, got {context!r}")
    if not isinstance(choices, list) or len(choices) < MIN_CHOICES:
        raise TaskError(f"{where}: field 'choices' must be a list of at least {MIN_CHOICES} strings, got {choices!r}")
    for index, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            raise TaskError(f"{where}: field 'choices' item {index} must be a non-empty string, got {choice!r}")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise TaskError(
            f"{where}: field 'gold' must be the index of the right choice, 0 to {len(choices) - 1}, got {gold!r}"
        )
    return Example(context, tuple(choices), gold)


# lm-evaluation-harness's YAML task format: the keys read, and those that would make the scores differ from its
# own if ignored. The rest (metric_list, metadata, tag, ...) change nothing here.
YAML_REFUSED = {
    "process_docs": "Python code",
    "num_fewshot": "few-shot contexts (pretrain scores zero-shot)",
    "fewshot_config": "few-shot contexts (pretrain scores zero-shot)",
    "include": "other YAML files (write the task out in one file)",
    "use_prompt": "prompt libraries",
    "doc_to_decontamination_query": "decontamination",
}


class _SafeLoader(yaml.SafeLoader):
    """safe_load's loader that reads lm-eval's `!function` tag as a marker to refuse, not as code to import."""


_SafeLoader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))


@dataclass(frozen=True)
class _Function:
    name: str


def _yaml_task(path: Path) -> Task:
    try:
        # yaml.SafeLoader plus one constructor: !function becomes a _Function holding its name, never imported.
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)
    except yaml.YAMLError as err:
        raise TaskError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise TaskError(f"{path}: an lm-eval task is a mapping of keys (task, dataset_path, doc_to_text, ...)")
    for key, value in spec.items():
        if isinstance(value, _Function):
            raise TaskError(
                f"{path}: field {key!r} is !function {value.name}: Python code, which pretrain never runs from a "
                f"task file; write it as a field name or a Jinja2 template, or convert the data to JSON lines"
            )
        if key in YAML_REFUSED and value:
            raise TaskError(f"{path}: field {key!r}: {YAML_REFUSED[key]} is not supported; remove it")
    if spec.get("output_type", "generate_until") != "multiple_choice":
        raise TaskError(f"{path}: field 'output_type' must be multiple_choice, got {spec.get('output_type')!r}")
    name = spec.get("task")
    if not isinstance(name, str) or not name:
        raise TaskError(f"{path}: field 'task' (the task's name) is missing")
    fields = {key: spec.get(key) for key in ("doc_to_text", "doc_to_choice", "doc_to_target")}
    for key, value in fields.items():
        if value is None:
            raise TaskError(f"{path}: field {key!r} is missing")
    render = _Renderer(path, spec.get("description") or "")
    delimiter = spec.get("target_delimiter", " ")
    if not isinstance(delimiter, str):
        raise TaskError(f"{path}: field 'target_delimiter' must be a string, got {delimiter!r}")
    examples = []
    for line, doc in _json_lines(_data_file(path, spec)):
        if not isinstance(doc, dict):
            raise TaskError(f"{path}: line {line} of its data is a {type(doc).__name__}, not an object")
        converted = render.example(doc, fields, line)
        examples.append(_example(converted, path, line))
    return Task(name, path, tuple(examples), delimiter)


def _data_file(path: Path, spec: dict) -> Path:
    """The local JSON lines file of the split lm-eval scores: test_split if set, else validation_split."""
    if spec.get("dataset_path") != "json":
        raise TaskError(
            f"{path}: field 'dataset_path' is {spec.get('dataset_path')!r}; pretrain reads local files only "
            f"(dataset_path: json, with dataset_kwargs.data_files naming a JSON lines file), never downloads"
        )
    files = (spec.get("dataset_kwargs") or {}).get("data_files")
    split = spec.get("test_split") or spec.get("validation_split")
    if isinstance(files, dict):
        if split not in files:
            raise TaskError(
                f"{path}: field 'dataset_kwargs.data_files' has no {split!r} split (test_split or "
                f"validation_split names the one scored); it has {sorted(files)}"
            )
        files = files[split]
    if isinstance(files, list) and len(files) == 1:
        files = files[0]
    if not isinstance(files, str):
        raise TaskError(f"{path}: field 'dataset_kwargs.data_files' must name one JSON lines file, got {files!r}")
    data = Path(files) if Path(files).is_absolute() else path.parent / files
    if not data.is_file():
        raise TaskError(f"{path}: field 'dataset_kwargs.data_files': {data} does not exist")
    return data


class _Renderer:
    """doc_to_text, doc_to_choice and doc_to_target applied to a document as lm-evaluation-harness applies them."""

    def __init__(self, path: Path, description: str):
        self.path, self.description = path, description
        self.env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)

    def example(self, doc: dict, fields: dict, line: int) -> dict:
        choices = self.choices(doc, fields["doc_to_choice"], line)
        return {
            "context": self.description + self.text(doc, fields["doc_to_text"], line),
            "choices": choices,
            "gold": self.target(doc, fields["doc_to_target"], choices, line),
        }

    def render(self, template: str, doc: dict, key: str, line: int) -> str:
        try:
            return self.env.from_string(template).render(**doc)
        except TemplateError as err:
            raise TaskError(f"{self.path}: field {key!r} on line {line} of its data: {err}") from None

    def text(self, doc: dict, spec: Any, line: int) -> Any:
        if isinstance(spec, str):
            return doc[spec] if spec in doc else self.render(spec, doc, "doc_to_text", line)
        return spec

    def choices(self, doc: dict, spec: Any, line: int) -> Any:
        if isinstance(spec, str):
            if spec in doc:
                return doc[spec]
            rendered = self.render(spec, doc, "doc_to_choice", line)
            try:
                return ast.literal_eval(rendered)  # literals only: lists of strings, never code
            except (ValueError, SyntaxError):
                raise TaskError(
                    f"{self.path}: field 'doc_to_choice' on line {line} of its data gave {rendered!r}, not a list"
                ) from None
        if isinstance(spec, list):
            return [self.render(item, doc, "doc_to_choice", line) for item in spec]
        if isinstance(spec, dict):
            return list(spec.values())
        return spec

    def target(self, doc: dict, spec: Any, choices: Any, line: int) -> Any:
        if isinstance(spec, str):
            if spec in doc:
                target = doc[spec]  # a field's value as it is: an index, or the right choice's text
            else:
                target = self.render(spec, doc, "doc_to_target", line)
                target = int(target) if target.isdigit() else target
            if isinstance(target, str) and isinstance(choices, list):
                return choices.index(target) if target in choices else target  # lm-eval: the text of a choice
            return target
        return spec
