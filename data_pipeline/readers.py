"""Reading one input file into records: a text with its line, or a reject with its reason.

Every reader reads the file itself, record by record, rather than through a
bulk reader: Ray's `read_json` aborts the whole job on one bad line, and
dropping whole blocks would lose good documents with the bad one. Here a
bad record becomes a `Reject` (reason, file, line) and reading goes on. Only
a file that cannot be opened at all stops the build, with its name.

Reasons: invalid_utf8, invalid_json, not_an_object, missing_field,
not_a_string, truncated_file.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.errors import DataError
from data_pipeline.sources import InputFile, filesystem

CHUNK_BYTES = 1 << 16  # small reads: a truncated compressed file loses at most this much of its tail


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    detail: str


Record = tuple[int, str] | Reject  # (line, text) or a reject


def read_records(input_file: InputFile, text_field: str = "text", text_unit: str = "file") -> Iterator[Record]:
    reader = {
        "jsonl": lambda: _jsonl_records(input_file.uri, text_field.split(".")),
        "parquet": lambda: _parquet_records(input_file.uri, text_field.split(".")),
        "text": lambda: _text_records(input_file.uri, text_unit),
        "python-docstrings": lambda: _docstring_records(input_file.uri),
    }[input_file.format]
    return reader()


def _open_stream(uri: str) -> io.RawIOBase | pa.NativeFile:
    """The file's decompressed bytes. gzip goes through Python's decoder, which hands out every byte it
    could decode before a truncation; pyarrow's (used for zstd) fails a whole 64 KB block."""
    fs, path = filesystem(uri)
    try:
        if path.endswith(".gz"):
            return gzip.GzipFile(fileobj=fs.open_input_stream(path, compression=None))
        return fs.open_input_stream(path, compression="detect")
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{uri}: cannot be opened ({err}); fix it or remove it from data.sources") from err


def _lines(uri: str) -> Iterator[tuple[int, bytes] | Reject]:
    """The file's lines as bytes, numbered from 1; a truncated compressed file ends with a reject."""
    partial: list[bytes] = []  # the pieces of a line that spans chunks (joined once: no quadratic copying)
    line_number = 0
    with _open_stream(uri) as stream:
        while True:
            try:
                chunk = stream.read1(CHUNK_BYTES)  # what is decoded so far, not a full block
            except (OSError, EOFError) as err:
                yield Reject(line_number + 1, "truncated_file", f"reading stopped here: {err}")
                return
            if not chunk:
                break
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                partial.append(chunk)
                continue
            lines[0] = b"".join([*partial, lines[0]])
            partial = [lines.pop()]
            for line in lines:
                line_number += 1
                yield line_number, line
    if any(partial):
        yield line_number + 1, b"".join(partial)


def _decode(line: bytes, line_number: int) -> str | Reject:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        return Reject(line_number, "invalid_utf8", f"byte {err.start}: {err.reason}")


def _field(record: object, path: list[str], line_number: int) -> Record:
    if not isinstance(record, dict):
        return Reject(line_number, "not_an_object", f"a JSON {type(record).__name__}, not an object")
    value: object = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return Reject(line_number, "missing_field", f"no field {'.'.join(path)!r}")
        value = value[key]
    if not isinstance(value, str):
        return Reject(line_number, "not_a_string", f"{'.'.join(path)!r} is a {type(value).__name__}")
    return line_number, value


def _jsonl_records(uri: str, path: list[str]) -> Iterator[Record]:
    for item in _lines(uri):
        if isinstance(item, Reject):
            yield item
            continue
        line_number, line = item
        if not line.strip():
            continue
        text = _decode(line, line_number)
        if isinstance(text, Reject):
            yield text
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            yield Reject(line_number, "invalid_json", err.msg)
            continue
        yield _field(record, path, line_number)


def _text_records(uri: str, text_unit: str) -> Iterator[Record]:
    if text_unit == "line":
        for item in _lines(uri):
            if isinstance(item, Reject):
                yield item
                continue
            text = _decode(item[1], item[0])
            yield text if isinstance(text, Reject) else (item[0], text)
        return
    with _open_stream(uri) as stream:
        try:
            data = stream.read()
        except (OSError, EOFError) as err:
            yield Reject(1, "truncated_file", f"the file cannot be read to its end: {err}")
            return
    text = _decode(data, 1)
    yield text if isinstance(text, Reject) else (1, text)


def _parquet_records(uri: str, path: list[str]) -> Iterator[Record]:
    fs, local = filesystem(uri)
    try:
        parquet = pq.ParquetFile(fs.open_input_file(local))
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{uri}: cannot be opened as Parquet ({err}); fix it or remove it from data.sources") from err
    if path[0] not in parquet.schema_arrow.names:
        raise DataError(
            f"{uri}: no column {path[0]!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
            f"set the source's text_field"
        )
    row = 0
    for batch in parquet.iter_batches(columns=[path[0]], batch_size=4096):
        column = batch.column(0)
        try:
            for key in path[1:]:
                column = pc.struct_field(column, key)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as err:
            raise DataError(f"{uri}: no field {'.'.join(path)!r} ({err}); set the source's text_field") from err
        is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        for value in column.to_pylist():
            row += 1
            if value is None:
                yield Reject(row, "missing_field", f"{'.'.join(path)!r} is null")
            elif not is_text:
                yield Reject(row, "not_a_string", f"{'.'.join(path)!r} is {column.type}")
            else:
                yield row, value


def _docstring_records(uri: str) -> Iterator[Record]:
    """Every module, class and function docstring of one Python file (the embedded corpus)."""
    with _open_stream(uri) as stream:
        source = stream.read()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return  # a few standard-library files are deliberately unparsable test data: no documents
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield getattr(node, "lineno", 1), inspect.cleandoc(docstring)
