"""Reading input files record by record: every bad record is a counted reject with its line, never a crash."""

import ast
import gzip
import inspect
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.cleaning import clean_text
from data_pipeline.config import CleaningConfig, DataConfig, SourceConfig
from data_pipeline.errors import DataError
from data_pipeline.readers import Reject, read_records
from data_pipeline.sources import list_source_files, plan_fingerprint, plan_units


def records(path, file_format="jsonl", **options):
    (input_file,) = list_source_files(SourceConfig(name="s", paths=[str(path)], format=file_format))
    return list(read_records(input_file, **options))


def test_jsonl_bad_records_are_rejected_by_reason_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b'{"text": broken',
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps(["not", "an", "object"]).encode(),
        b'{"text": "bad byte \xff here"}',
        b"",
        json.dumps({"text": "good two"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines))  # and no newline at the end
    got = records(path)
    assert got == [
        "good one",
        Reject(2, "invalid_json", "Expecting value"),
        Reject(3, "missing_field", "no field 'text'"),
        Reject(4, "not_a_string", "'text' is a int"),
        Reject(5, "not_an_object", "a JSON list, not an object"),
        Reject(6, "invalid_utf8", "byte 19: invalid start byte"),
        "good two",
    ]


def test_nested_field_in_zstd_jsonl(tmp_path):
    path = tmp_path / "nested.jsonl.zst"
    rows = [{"meta": {"body": f"text {i}"}} for i in range(1000)] + [{"meta": "flat"}]
    with pa.CompressedOutputStream(str(path), "zstd") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    got = records(path, text_field="meta.body")
    assert got[:1000] == [f"text {i}" for i in range(1000)]
    assert got[1000] == Reject(1001, "missing_field", "no field 'meta.body'")


def test_truncated_gzip_keeps_what_came_before_and_says_where_it_stopped(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(50_000)).encode())
    path.write_bytes(data[: len(data) * 3 // 4])
    got = records(path)
    good = [r for r in got if not isinstance(r, Reject)]
    assert isinstance(got[-1], Reject) and got[-1].reason == "truncated_file"
    assert got[-1].line == len(good) + 1
    assert 20_000 < len(good) < 50_000
    assert good[-1] == f"document {len(good) - 1}"


def test_parquet_nested_field_nulls_and_row_numbers(tmp_path):
    path = tmp_path / "table.parquet"
    meta = pa.array([{"body": "first"}, {"body": None}, None, {"body": "fourth"}])
    pq.write_table(pa.table({"meta": meta, "id": [1, 2, 3, 4]}), path, row_group_size=2)
    assert records(path, "parquet", text_field="meta.body") == [
        "first",
        Reject(2, "missing_field", "'meta.body' is null"),
        Reject(3, "missing_field", "'meta.body' is null"),
        "fourth",
    ]
    assert [r.reason for r in records(path, "parquet", text_field="id")] == ["not_a_string"] * 4
    with pytest.raises(DataError, match=r"table.parquet: no column 'body' \(columns: meta, id\)"):
        records(path, "parquet", text_field="body")


def test_text_files_per_file_and_per_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"first line\nsecond \xfe line\r\nthird line\n")
    assert records(path, "text") == [Reject(1, "invalid_utf8", "byte 18: invalid start byte")]
    assert records(path, "text", text_unit="line") == [
        "first line",
        Reject(2, "invalid_utf8", "byte 7: invalid start byte"),
        "third line",
    ]


def test_text_files_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(b"\n\nFirst paragraph,\nits second line.\n\n  \n\nSecond \xfe one.\n\nThird\nand last")
    assert records(path, "text", text_unit="paragraph") == [
        "First paragraph,\nits second line.",
        Reject(8, "invalid_utf8", "byte 7: invalid start byte"),
        "Third\nand last",
    ]


def test_an_empty_corpus_names_what_removed_most_and_an_empty_validation_split_says_why():
    from data_pipeline.build import _refuse_an_empty_corpus
    from data_pipeline.manifest import refuse_an_empty_validation_split

    scans = [
        {
            "counts": {"valid": 0, "filtered": {"gopher_quality.min_words": 7, "too_short": 2}, "rejected": {}},
            "rejects": [],
            "filter_examples": {"gopher_quality.min_words": "A short note.", "too_short": "hi"},
        },
        {
            "counts": {"valid": 0, "filtered": {"gopher_quality.min_words": 1}, "rejected": {"invalid_json": 3}},
            "rejects": [{"file": "a.jsonl", "line": 4, "reason": "invalid_json", "detail": "x"}] * 3,
            "filter_examples": {"gopher_quality.min_words": "Another."},
        },
    ]
    with pytest.raises(DataError, match=r"most were filtered by gopher_quality.min_words \(8 of 13\), for example "):
        _refuse_an_empty_corpus(scans)
    with pytest.raises(DataError, match="'A short note.'; relax that rule in data.cleaning"):
        _refuse_an_empty_corpus(scans)
    with pytest.raises(DataError, match=r"1 document\(s\) were written.* about 0.05 of them were expected.*text_unit"):
        refuse_an_empty_validation_split([{"split": "train", "documents": 1}], 0.05)


def test_a_file_that_cannot_be_opened_fails_with_its_name(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="garbage.parquet: cannot be opened as Parquet"):
        records(path, "parquet")


def test_cleaning_normalizes_strips_and_filters():
    config = CleaningConfig(min_chars=5, max_chars=20)
    assert clean_text("  Cafe\u0301\x00 au lait\x07 ", config) == ("Caf\u00e9 au lait", None)
    assert clean_text("lone \ud800 surrogate", config) == ("lone ? surrogate", None)
    assert clean_text(" \x00 ", config) == ("", "empty")
    assert clean_text("tiny", config) == ("tiny", "too_short")
    assert clean_text("x" * 21, config) == ("x" * 21, "too_long")
    raw = CleaningConfig(normalize_nfc=False, remove_control_chars=False, min_chars=0)
    assert clean_text("e\u0301\x07", raw) == ("e\u0301\x07", None)


def test_sources_by_path_glob_folder_and_file_uri(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/one.jsonl", "a/two.jsonl.gz", "a/skip.md", "b.jsonl", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    folder = SourceConfig(name="s", paths=[f"file://{tmp_path}/a"])
    assert [f.uri for f in list_source_files(folder)] == [
        f"file://{tmp_path}/a/one.jsonl",
        f"file://{tmp_path}/a/two.jsonl.gz",
    ]
    pattern = SourceConfig(name="s", paths=[str(tmp_path / "*.jsonl")], format="jsonl")
    assert [f.uri for f in list_source_files(pattern)] == [str(tmp_path / "b.jsonl")]
    text = SourceConfig(name="s", paths=[str(tmp_path / "c.txt")])
    assert [f.format for f in list_source_files(text)] == ["text"]


@pytest.mark.parametrize(
    "paths, message",
    [
        (["nowhere/*.jsonl"], r"'nowhere/\*.jsonl' matches no file"),
        (["{tmp}/missing.jsonl"], "missing.jsonl' does not exist"),
        (["{tmp}/table.csv"], "table.csv' is not a auto file; use one of .jsonl"),
        (["{tmp}/empty"], "hold no .jsonl"),
    ],
    ids=["glob", "missing", "suffix", "empty-folder"],
)
def test_bad_source_paths_are_named(tmp_path, paths, message):
    (tmp_path / "table.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    source = SourceConfig(name="s", paths=[p.format(tmp=tmp_path) for p in paths])
    with pytest.raises(DataError, match=message):
        list_source_files(source)


def test_units_follow_the_input_size_and_the_plan_tracks_files(tmp_path):
    for index in range(5):
        (tmp_path / f"part-{index}.jsonl").write_bytes(b"x" * 400_000)
    config = DataConfig(sources=[{"name": "web", "paths": [str(tmp_path)]}], shard_size_mb=1)
    units = plan_units(config)
    assert [len(u.files) for u in units] == [3, 2]
    assert [(u.source, u.number, u.index) for u in units] == [("web", 0, 0), ("web", 1, 1)]
    before = plan_fingerprint(units, config)
    assert plan_fingerprint(plan_units(config.model_copy(update={"output_dir": "elsewhere"})), config) == before
    (tmp_path / "part-4.jsonl").write_bytes(b"y" * 400_001)
    assert plan_fingerprint(plan_units(config), config) != before


def test_source_names_must_be_unique_and_usable_in_file_names():
    with pytest.raises(ValueError, match="the name\\(s\\) web are used twice"):
        DataConfig(sources=[{"name": "web", "paths": ["a"]}, {"name": "web", "paths": ["b"]}])
    with pytest.raises(ValueError, match="String should match pattern"):
        SourceConfig(name="web/1", paths=["a"])
    with pytest.raises(ValueError, match="source 'web' has no paths"):
        SourceConfig(name="web")


def test_a_large_file_is_read_in_byte_ranges_that_cover_every_line_once(tmp_path):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"document number {i} " + "x" * (i % 97)}).encode() for i in range(3000)]
    lines[100] = json.dumps({"text": "a line longer than several ranges " + "z" * 50_000}).encode()
    lines[2500] = b"{broken"
    path.write_bytes(b"\n".join(lines))  # the last line has no newline
    config = DataConfig(sources=[{"name": "s", "paths": [str(path)]}], shard_size_mb=0.01)
    units = plan_units(config)
    assert len(units) == len(range(0, path.stat().st_size, 10_000)) > 10
    assert all(len(u.files) == 1 and u.files[0].end is not None for u in units)
    got = [record for unit in units for record in read_records(unit.files[0])]
    texts = [r for r in got if isinstance(r, str)]
    assert texts == [json.loads(line)["text"] for i, line in enumerate(lines) if i != 2500]
    assert [r for r in got if isinstance(r, Reject)] == [
        Reject(2501, "invalid_json", "Expecting property name enclosed in double quotes")
    ]


def test_compressed_files_are_never_split(tmp_path):
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(json.dumps({"text": "y" * 100}).encode() + b"\n" for _ in range(5000))))
    config = DataConfig(sources=[{"name": "s", "paths": [str(path)]}], shard_size_mb=0.0001)
    assert [u.files[0].end for u in plan_units(config)] == [None]


NESTED_DOCSTRINGS = '''
"""module"""
import os


class Outer:
    """class"""

    def method(self):
        """method"""
        lambda: None

        class Inner:
            """class in a method"""

    async def coroutine(self):
        """async method"""


if os.sep:
    def in_if():
        """in an if"""
else:
    def in_else():
        """in an else"""

try:
    def in_try():
        """in a try"""
except ValueError:
    def in_except():
        """in an except"""
finally:
    def in_finally():
        """in a finally"""

for _ in ():
    def in_for():
        """in a for"""

with open(os.devnull) as f:
    def in_with():
        """in a with"""

match os.sep:
    case "/":
        def in_case():
            """
            in a case,
                indented
            """


def no_docstring():
    x = 1
    """not a docstring: not the first statement"""
'''


def test_python_docstrings_are_every_module_class_and_function_docstring_in_ast_walk_order(tmp_path):
    """Read without visiting expressions: the same documents, in the same order, as a walk of the whole tree."""
    path = tmp_path / "nested.py"
    path.write_text(NESTED_DOCSTRINGS)
    every_node = [
        inspect.cleandoc(ast.get_docstring(node, clean=False))
        for node in ast.walk(ast.parse(NESTED_DOCSTRINGS))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and ast.get_docstring(node)
    ]
    got = records(path, "python-docstrings")
    assert got == every_node
    assert len(got) == 13 and "class in a method" in got and got[-1] == "in a case,\n    indented"
