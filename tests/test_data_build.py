"""The Ray Data build on real files: counts, round trip through the tokenizer, determinism, errors."""

import json

import pyarrow as pa
import pytest
from data_pipeline.corpus import expand_sources
from tokenizers import Tokenizer

from data_pipeline.build import build_dataset
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.shards import read_manifest
from data_pipeline.tokenizer import END_OF_TEXT, file_sha256

pytestmark = pytest.mark.slow


def build(corpus_dir, out_dir, **overrides):
    config = DataConfig(
        sources=[str(corpus_dir)], output_dir=str(out_dir), tokenizer={"vocab_size": 400}, val_fraction=0.1, **overrides
    )
    return build_dataset(config, {"data": config.model_dump()})


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_documents):
    root = tmp_path_factory.mktemp("build")
    corpus = root / "corpus"
    corpus.mkdir()
    documents = make_documents(300)
    with open(corpus / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for text in documents + documents[:5])
    return documents, corpus, root / "out", build(corpus, root / "out")


def test_counts_balance(built):
    documents, _, out_dir, manifest = built
    stats, totals = manifest["stats"], manifest["totals"]
    assert stats["documents_after_cleaning"] == len(documents) + 5
    assert stats["documents_after_dedup"] == len(documents)
    assert totals["train"]["documents"] + totals["val"]["documents"] == len(documents)
    assert 0 < totals["val"]["documents"] < len(documents) * 0.25


def test_shards_decode_to_the_documents(built):
    documents, _, out_dir, manifest = built
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    eot = tokenizer.token_to_id(END_OF_TEXT)
    decoded = set()
    for shard in manifest["shards"]:
        column = pa.ipc.open_file(pa.memory_map(str(out_dir / shard["file"]))).get_batch(0).column("tokens")
        assert column.type == pa.list_(pa.uint16())
        for tokens in column.to_pylist():
            assert tokens[-1] == eot and eot not in tokens[:-1]
            decoded.add(tokenizer.decode(tokens[:-1]))
        assert shard["sha256"] == file_sha256(out_dir / shard["file"])
    assert decoded == set(documents)


def test_manifest_records_tokenizer_and_config(built):
    _, _, out_dir, manifest = built
    assert manifest["tokenizer"]["sha256"] == file_sha256(out_dir / "tokenizer.json")
    assert manifest["tokenizer"]["vocab_size"] <= 400
    assert manifest["config"]["data"]["tokenizer"]["vocab_size"] == 400
    assert read_manifest(out_dir) == manifest


def test_rebuild_replaces_the_dataset_with_identical_shards(built):
    _, corpus, out_dir, manifest = built
    again = build(corpus, out_dir)
    assert again["fingerprint"] == manifest["fingerprint"]
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_every_input_layout_is_read(corpus_dir, tmp_path):
    manifest = build(corpus_dir, tmp_path / "out")
    assert manifest["stats"]["documents_after_cleaning"] == 402
    assert manifest["stats"]["documents_after_dedup"] == 400


def test_a_folder_that_is_not_a_dataset_is_never_replaced(built, tmp_path):
    _, corpus, _, _ = built
    out_dir = tmp_path / "project"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match=r"project holds files that are not a dataset's \(notes.txt\)"):
        build(corpus, out_dir)
    assert (out_dir / "notes.txt").read_text() == "precious"


def test_bad_json_line_names_file_and_line(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "a fine first document of enough length"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        build(corpus, tmp_path / "out")


def test_wrong_text_field_says_how_to_fix(tmp_path):
    corpus = tmp_path / "other.jsonl"
    corpus.write_text('{"body": "a fine first document of enough length"}\n')
    with pytest.raises(DataError, match=r"other.jsonl:1: no string field 'text'; set data.text_field"):
        build(corpus, tmp_path / "out")


def test_sources_are_checked_before_any_work(tmp_path):
    with pytest.raises(DataError, match="'nowhere/\\*.jsonl' matches no file"):
        expand_sources(["nowhere/*.jsonl"])
    with pytest.raises(DataError, match="does not exist"):
        expand_sources([str(tmp_path / "missing.jsonl")])
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="table.csv' is not a supported file"):
        expand_sources([str(tmp_path / "table.csv")])
