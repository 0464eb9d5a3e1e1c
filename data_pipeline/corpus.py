"""Where documents come from: the embedded default corpus and the user's own files.

Each function here turns one input file into documents (`{"text", "source"}`
rows); the pipeline runs them as Ray tasks, one file per call.
"""

from __future__ import annotations

import ast
import glob
import gzip
import inspect
import io
import json
import sysconfig
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from data_pipeline.errors import DataError

STDLIB_SOURCE = "python-stdlib-docstrings"
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def stdlib_files() -> list[str]:
    """The running interpreter's standard library sources: the embedded corpus, no download."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        str(path)
        for path in root.rglob("*.py")
        if not {"site-packages", "dist-packages", "__pycache__"} & set(path.relative_to(root).parts)
    )


def stdlib_docstrings(path: str) -> Iterator[dict]:
    """Every module, class and function docstring of one standard-library file."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (SyntaxError, ValueError):
        # A few stdlib files are deliberately unparsable test data.
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield {"text": inspect.cleandoc(docstring), "source": STDLIB_SOURCE}


def expand_sources(sources: list[str]) -> list[str]:
    """Files named by paths, folders and globs, sorted so every build sees the same order."""
    files: set[str] = set()
    for source in sources:
        matches = glob.glob(source, recursive=True) if glob.has_magic(source) else [source]
        if not matches:
            raise DataError(f"data.sources: {source!r} matches no file; check the path or glob")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                files.update(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(SUPPORTED_SUFFIXES))
            elif path.is_file():
                if not path.name.endswith(SUPPORTED_SUFFIXES):
                    raise DataError(
                        f"data.sources: {match!r} is not a supported file; use one of {', '.join(SUPPORTED_SUFFIXES)}"
                    )
                files.add(str(path))
            else:
                raise DataError(f"data.sources: {match!r} does not exist")
    if not files:
        raise DataError(f"data.sources: {sources} hold no {', '.join(SUPPORTED_SUFFIXES)} file")
    return sorted(files)


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def file_documents(path: str, text_field: str) -> Iterator[dict]:
    """The documents of one user file: a whole .txt file, one JSONL line, or one Parquet row."""
    source = Path(path).name
    try:
        if path.endswith(TEXT_SUFFIXES):
            with _open_text(path) as f:
                yield {"text": f.read(), "source": source}
        elif path.endswith(JSONL_SUFFIXES):
            yield from _jsonl_documents(path, text_field, source)
        else:
            table = pq.read_table(path, columns=[text_field])
            for text in table.column(text_field).to_pylist():
                if text:
                    yield {"text": text, "source": source}
    except (OSError, UnicodeDecodeError, EOFError, KeyError) as err:
        raise DataError(f"{path}: cannot be read ({err}); fix or remove it from data.sources") from err


def _jsonl_documents(path: str, text_field: str, source: str) -> Iterator[dict]:
    with _open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_number}: not valid JSON ({err.msg})") from err
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(
                    f"{path}:{line_number}: no string field {text_field!r}; "
                    f"set data.text_field to the field that holds the text"
                )
            yield {"text": text, "source": source}
