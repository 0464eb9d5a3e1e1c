"""The shard format and the deterministic, rank-aware, mixable, resumable loader."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_pipeline.errors import DataError
from data_pipeline.loader import MIX_BLOCK, BatchLoader, TokenSequences
from data_pipeline.shards import (
    ShardWriter,
    core_manifest,
    read_manifest,
    verify_dataset,
    verify_shard,
    write_manifest,
)
from data_pipeline.tokenizer import file_sha256
from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.train.preflight import check_job

SEQ_LEN = 8
VOCAB = 16_000  # numbered_documents' token ids stay below it


def write_dataset(out_dir: Path, sources: dict[str, list[list[int]]], target_bytes: int = 400) -> dict:
    """Shards of the given token documents per source (the last three of each in val), as a build writes them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for source, documents in sources.items():
        writers = {
            split: ShardWriter(out_dir, split, source, 0, pa.uint16(), target_bytes) for split in ("train", "val")
        }
        for index, document in enumerate(documents):
            split = "val" if index >= len(documents) - 3 else "train"
            writers[split].add(np.array(document, dtype=np.uint16), np.array([len(document)]))
        for writer in writers.values():
            writer.close()
            shards += writer.records
    (out_dir / "tokenizer.json").write_text("{}")
    tokenizer = {"file": "tokenizer.json", "sha256": file_sha256(out_dir / "tokenizer.json"), "vocab_size": VOCAB}
    manifest = core_manifest(shards, tokenizer, pa.uint16())
    write_manifest(out_dir, manifest)
    return manifest


def numbered_documents(count: int, first: int = 0, seed: int = 0) -> list[list[int]]:
    """Document d holds the tokens 100*d, 100*d+1, ...: every token says where it came from."""
    rng = np.random.default_rng(seed)
    return [[100 * d + i for i in range(int(rng.integers(5, 40)))] for d in range(first, first + count)]


@pytest.fixture
def dataset(tmp_path) -> Path:
    write_dataset(tmp_path / "data", {"synthetic": numbered_documents(60)})
    return tmp_path / "data"


@pytest.fixture
def two_sources(tmp_path) -> Path:
    # "web" tokens are below 6000, "code" tokens 10000 and above.
    write_dataset(
        tmp_path / "mixed", {"web": numbered_documents(60), "code": numbered_documents(20, first=100, seed=1)}
    )
    return tmp_path / "mixed"


def test_shards_are_contiguous_token_streams_with_document_offsets(dataset):
    manifest = read_manifest(dataset)
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    assert len(train) > 1, "the small target size must roll over into several shards"
    assert [s["file"] for s in train[:2]] == ["train-synthetic-00000-00.arrow", "train-synthetic-00000-01.arrow"]
    column = pa.ipc.open_file(pa.memory_map(str(dataset / train[0]["file"]))).get_batch(0).column("tokens")
    assert len(column.values) == train[0]["tokens"]
    first_length = column.value_lengths()[0].as_py()
    assert column.values.to_pylist()[:first_length] == list(range(first_length))


def test_sequences_are_seq_len_plus_one_consecutive_tokens(dataset):
    sequences = TokenSequences(dataset, "train", SEQ_LEN)
    assert len(sequences) > 50
    for index in (0, 1, len(sequences) - 1):
        assert len(sequences[index]) == SEQ_LEN + 1
    # Consecutive sequences overlap by one token: the last target is the next input.
    assert sequences[0][-1] == sequences[1][0]


def test_only_a_tail_shorter_than_a_sequence_is_dropped_per_shard(dataset):
    manifest = read_manifest(dataset)
    sequences = TokenSequences(dataset, "train", SEQ_LEN)
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    expected = sum((s["tokens"] - 1) % SEQ_LEN for s in train)
    assert sequences.dropped_tokens == expected
    assert 0 < sequences.dropped_tokens < len(train) * SEQ_LEN
    assert len(sequences) * SEQ_LEN + len(train) + sequences.dropped_tokens == sum(s["tokens"] for s in train)


def test_document_starts_are_where_token_numbering_restarts(dataset):
    sequences = TokenSequences(dataset, "train", SEQ_LEN)
    for index in range(len(sequences)):
        inputs = sequences[index][:-1].astype(np.int64)
        restarts = [i for i in range(SEQ_LEN) if inputs[i] % 100 == 0]
        assert sequences.document_starts(index).tolist() == restarts


def test_document_ids_change_exactly_where_a_document_starts(dataset):
    loader = BatchLoader(dataset, "train", SEQ_LEN, 4, 2, 0, 1, seed=7, document_ids=True)
    micro_batches = loader.next_step()
    assert all(len(batch) == 3 for batch in micro_batches)
    for inputs, _, document_ids in micro_batches:
        assert document_ids.shape == inputs.shape
        for row, ids in zip(inputs, document_ids):
            assert ids[0] == 0
            # Every token numbered 100*d is a document's first: the id steps up there and nowhere else.
            steps = [i for i in range(1, SEQ_LEN) if ids[i] != ids[i - 1]]
            assert steps == [i for i in range(1, SEQ_LEN) if row[i] % 100 == 0]
            assert np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)


def make_loader(data, micro, accum, rank, ranks, seed=7, mixture=None):
    return BatchLoader(data, "train", SEQ_LEN, micro, accum, rank, ranks, seed, mixture=mixture)


def step_rows(loader) -> list[list[int]]:
    return [row.tolist() for inputs, _ in loader.next_step() for row in inputs]


def test_targets_are_inputs_shifted_by_one(dataset):
    inputs, targets = make_loader(dataset, 4, 1, 0, 1).next_step()[0]
    assert inputs.shape == targets.shape == (4, SEQ_LEN)
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_ranks_split_the_same_global_batch(dataset):
    """2 ranks x micro 2 x accumulation 2 see exactly the sequences of 1 rank x micro 8."""
    single = make_loader(dataset, 8, 1, 0, 1)
    pair = [make_loader(dataset, 2, 2, rank, 2) for rank in range(2)]
    for _ in range(5):
        combined = step_rows(pair[0]) + step_rows(pair[1])
        assert combined == step_rows(single)


def test_every_sequence_once_per_epoch_then_a_new_order(dataset):
    total = len(TokenSequences(dataset, "train", SEQ_LEN))
    loader = make_loader(dataset, 1, 1, 0, 1)
    first = [tuple(step_rows(loader)[0]) for _ in range(total)]
    second = [tuple(step_rows(loader)[0]) for _ in range(total)]
    assert len(set(first)) == total and set(first) == set(second)
    assert first != second
    assert loader.state_dict()["epoch"] == 2
    assert step_rows(make_loader(dataset, 1, 1, 0, 1, seed=8)) != [list(first[0])]


def test_resume_continues_with_the_next_batch(dataset):
    uninterrupted = make_loader(dataset, 4, 1, 0, 1)
    expected = [step_rows(uninterrupted) for _ in range(30)]
    first = make_loader(dataset, 4, 1, 0, 1)
    for _ in range(17):
        first.next_step()
    state = json.loads(json.dumps(first.state_dict()))  # survives serialization
    resumed = make_loader(dataset, 4, 1, 0, 1)
    resumed.load_state_dict(state)
    assert [step_rows(resumed) for _ in range(13)] == expected[17:]


def test_resume_on_another_number_of_ranks_continues_the_global_order(dataset, two_sources):
    for data, mixture in ((dataset, None), (two_sources, {"web": 0.6, "code": 0.4})):
        single = make_loader(data, 4, 1, 0, 1, mixture=mixture)
        expected = [step_rows(single) for _ in range(20)]
        pair = [make_loader(data, 2, 1, rank, 2, mixture=mixture) for rank in range(2)]
        for _ in range(8):
            for loader in pair:
                loader.next_step()
        state = json.loads(json.dumps(pair[0].state_dict()))
        resumed = make_loader(data, 4, 1, 0, 1, mixture=mixture)
        resumed.load_state_dict(state)
        assert [step_rows(resumed) for _ in range(12)] == expected[8:]


def test_resume_with_another_seed_or_mixture_is_refused(two_sources):
    state = make_loader(two_sources, 4, 1, 0, 1).state_dict()
    with pytest.raises(DataError, match="seed=7, this run has 8"):
        make_loader(two_sources, 4, 1, 0, 1, seed=8).load_state_dict(state)
    with pytest.raises(DataError, match="saved with mixture={}"):
        make_loader(two_sources, 4, 1, 0, 1, mixture={"web": 1.0}).load_state_dict(state)


def test_mixture_follows_the_weights_and_repeats_the_small_source(two_sources):
    loader = make_loader(two_sources, MIX_BLOCK, 1, 0, 1, mixture={"web": 0.3, "code": 0.7})
    rows = step_rows(loader) + step_rows(loader)
    code = sum(1 for row in rows if row[0] >= 10_000)
    assert code == round(0.7 * MIX_BLOCK) * 2
    code_sequences = len(TokenSequences(two_sources, "train", SEQ_LEN, sources={"code"}))
    assert code > code_sequences, "the code source is small: it must repeat, not run dry"
    assert len({tuple(row) for row in rows if row[0] >= 10_000}) == code_sequences
    assert loader.dropped_tokens > 0


def test_unknown_mixture_source_is_named(two_sources):
    with pytest.raises(DataError, match="train.mixture: no source 'books' in .* \\(it has code, web\\)"):
        make_loader(two_sources, 4, 1, 0, 1, mixture={"books": 1.0})


def test_missing_manifest_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="no manifest; build the dataset first with `pretrain data build`"):
        read_manifest(tmp_path)


def test_missing_shard_is_named(dataset):
    (dataset / "train-synthetic-00000-01.arrow").unlink()
    with pytest.raises(DataError, match="train-synthetic-00000-01.arrow: shard named in the manifest is missing"):
        TokenSequences(dataset, "train", SEQ_LEN)


def test_truncated_shard_is_named(dataset):
    path = dataset / "train-synthetic-00000-00.arrow"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-synthetic-00000-00.arrow: .* bytes, the manifest says .*truncated"):
        read_manifest(dataset)


def test_shard_with_another_schema_is_named(dataset):
    path = dataset / "val-synthetic-00000-00.arrow"
    table = pa.table({"tokens": pa.array([[1, 2, 3]], type=pa.list_(pa.uint32()))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    manifest = json.loads((dataset / "manifest.json").read_text())
    next(s for s in manifest["shards"] if s["file"] == path.name)["bytes"] = path.stat().st_size
    write_manifest(dataset, manifest)
    with pytest.raises(DataError, match="val-synthetic-00000-00.arrow: schema .*uint32.* is not .*uint16"):
        read_manifest(dataset)


def test_verify_finds_an_altered_shard_of_the_same_size(dataset):
    assert verify_dataset(dataset)["fingerprint"]
    path = dataset / "train-synthetic-00000-00.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a token in the values buffer
    path.write_bytes(bytes(data))
    read_manifest(dataset)  # size and schema still match
    with pytest.raises(DataError, match="train-synthetic-00000-00.arrow: its checksum differs from the manifest"):
        verify_dataset(dataset)


def test_a_token_id_outside_the_vocabulary_is_named_with_its_file_and_row(tmp_path):
    documents = numbered_documents(20)
    documents[4] = [1, 2, VOCAB + 7, 3]  # a shard written by another tokenizer, its checksum in the manifest
    write_dataset(tmp_path / "data", {"synthetic": documents})
    manifest = read_manifest(tmp_path / "data")
    shard = next(s for s in manifest["shards"] if s["split"] == "train")
    with pytest.raises(DataError, match=rf"{shard['file']}: row 4 \(a document\) holds token id {VOCAB + 7}, outside"):
        verify_shard(tmp_path / "data", shard, VOCAB)


def test_an_unreadable_shard_is_named(dataset):
    path = dataset / "train-synthetic-00000-00.arrow"
    path.write_bytes(b"\0" * path.stat().st_size)  # same size: read_manifest's cheap checks would not see it
    with pytest.raises(DataError, match="train-synthetic-00000-00.arrow: not a readable shard"):
        TokenSequences(dataset, "train", SEQ_LEN, manifest=json.loads((dataset / "manifest.json").read_text()))


def test_split_too_small_for_the_sequence_length(dataset):
    with pytest.raises(DataError, match="no sequence of 10001 tokens; lower train.seq_len"):
        TokenSequences(dataset, "val", 10_000)


def test_manifest_fingerprint_tracks_content(tmp_path):
    documents = [[1, 2, 3, 4, 5] * 4 for _ in range(10)]
    first = write_dataset(tmp_path / "a", {"s": documents})
    same = write_dataset(tmp_path / "b", {"s": documents})
    other = write_dataset(tmp_path / "c", {"s": documents[:-1] + [[9] * 20]})
    assert first["fingerprint"] == same["fingerprint"] != other["fingerprint"]
    assert first["totals"]["val"]["documents"] == 3


def job_config(dataset, tmp_path, *overrides):
    return load_config(
        overrides=[
            f"data.output_dir={dataset}",
            f"model.vocab_size={VOCAB}",
            f"data.tokenizer.vocab_size={VOCAB}",
            "train.seq_len=8",
            "train.micro_batch_size=4",
            "train.global_batch_size=4",
            f"checkpoint.root={tmp_path}",
            *overrides,
        ]
    )


def test_preflight_refuses_a_dataset_with_a_larger_vocabulary(dataset, tmp_path):
    config = job_config(dataset, tmp_path, "model.vocab_size=512", "data.tokenizer.vocab_size=400")
    with pytest.raises(ConfigError, match=r"model.vocab_size = 512: smaller than the dataset's tokenizer \(16000\)"):
        check_job(config, require_checkpoint=False)


def test_preflight_refuses_shards_of_another_tokenizer(dataset, tmp_path):
    config = job_config(dataset, tmp_path)
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "tokenizer.json").write_text('{"another": "tokenizer"}')
    with pytest.raises(DataError, match="tokenized with another tokenizer than this run's"):
        check_job(config, require_checkpoint=False)


def test_preflight_names_an_unknown_mixture_source(two_sources, tmp_path):
    config = job_config(two_sources, tmp_path, "train.mixture={web: 0.5, books: 0.5}")
    with pytest.raises(DataError, match="train.mixture: no source 'books'"):
        check_job(config, require_checkpoint=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.global_batch_size=4096"], r"the train split has \d+ sequences of 9 tokens, fewer than one batch"),
        (["eval.batches=500"], r"the val split has \d+ sequences .* raise data.val_fraction"),
    ],
    ids=["train", "val"],
)
def test_preflight_refuses_splits_smaller_than_a_batch(dataset, tmp_path, overrides, message):
    with pytest.raises(DataError, match=message):
        check_job(job_config(dataset, tmp_path, *overrides), require_checkpoint=False)
