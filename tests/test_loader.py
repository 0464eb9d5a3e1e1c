"""The shard format and the deterministic, rank-aware, resumable loader."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_pipeline.errors import DataError
from data_pipeline.loader import BatchLoader, TokenSequences
from data_pipeline.shards import MANIFEST_NAME, ShardWriter, build_manifest, read_manifest, write_manifest
from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.preflight import check_job

SEQ_LEN = 8


def write_dataset(out_dir: Path, documents: list[list[int]], target_bytes: int = 400) -> dict:
    """Shards of the given token documents (all in train, the last three in val), as the build writes them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {split: ShardWriter(out_dir, split, pa.uint16(), target_bytes) for split in ("train", "val")}
    for index, document in enumerate(documents):
        split = "val" if index >= len(documents) - 3 else "train"
        tokens = pa.array([np.array(document, dtype=np.uint16)], type=pa.list_(pa.uint16()))
        writers[split].add(pa.table({"tokens": tokens, "source": ["synthetic"]}))
    for writer in writers.values():
        writer.flush()
    records = writers["train"].records + writers["val"].records
    tokenizer = {"file": "tokenizer.json", "sha256": "0" * 64, "vocab_size": 1000, "eot_id": 0}
    manifest = build_manifest(records, tokenizer, pa.uint16(), {}, {})
    write_manifest(out_dir, manifest)
    return manifest


@pytest.fixture
def dataset(tmp_path) -> Path:
    # Document d holds the tokens 100*d, 100*d+1, ...: every token says where it came from.
    rng = np.random.default_rng(0)
    documents = [[100 * d + i for i in range(int(rng.integers(5, 40)))] for d in range(60)]
    write_dataset(tmp_path / "data", documents)
    return tmp_path / "data"


def test_shards_are_contiguous_token_streams(dataset):
    manifest = read_manifest(dataset)
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    assert len(train) > 1, "the small target size must roll over into several shards"
    column = pa.ipc.open_file(pa.memory_map(str(dataset / train[0]["file"]))).get_batch(0).column("tokens")
    assert len(column.values) == train[0]["tokens"]
    assert column.values.to_pylist()[: column.value_lengths()[0].as_py()] == list(
        range(0, column.value_lengths()[0].as_py())
    )


def test_sequences_are_seq_len_plus_one_consecutive_tokens(dataset):
    sequences = TokenSequences(dataset, "train", SEQ_LEN)
    assert len(sequences) > 50
    for index in (0, 1, len(sequences) - 1):
        sequence = sequences[index]
        assert len(sequence) == SEQ_LEN + 1
    # Consecutive sequences overlap by one token: the last target is the next input.
    assert sequences[0][-1] == sequences[1][0]


def make_loader(dataset, micro, accum, rank, ranks, seed=7):
    return BatchLoader(TokenSequences(dataset, "train", SEQ_LEN), micro, accum, rank, ranks, seed)


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


def test_ranks_never_share_a_sequence_within_an_epoch(dataset):
    loaders = [make_loader(dataset, 2, 1, rank, 2) for rank in range(2)]
    seen = [tuple(row) for _ in range(loaders[0].steps_per_epoch) for loader in loaders for row in step_rows(loader)]
    assert len(seen) == len(set(seen))


def test_epochs_reshuffle_and_seeds_differ(dataset):
    loader = make_loader(dataset, 4, 1, 0, 1)
    first_epoch = [step_rows(loader) for _ in range(loader.steps_per_epoch)]
    second_epoch = [step_rows(loader) for _ in range(loader.steps_per_epoch)]
    assert loader.epoch == 1
    assert first_epoch != second_epoch
    assert step_rows(make_loader(dataset, 4, 1, 0, 1, seed=8)) != first_epoch[0]


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


def test_resume_with_other_batch_settings_is_refused(dataset):
    state = make_loader(dataset, 4, 1, 0, 1).state_dict()
    with pytest.raises(DataError, match="global_batch=4.*this run has 8"):
        make_loader(dataset, 8, 1, 0, 1).load_state_dict(state)


def test_missing_manifest_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="no manifest; build the dataset first with `pretrain data`"):
        read_manifest(tmp_path)


def test_missing_shard_is_named(dataset):
    (dataset / "train-00001.arrow").unlink()
    with pytest.raises(DataError, match="train-00001.arrow: shard named in the manifest is missing"):
        TokenSequences(dataset, "train", SEQ_LEN)


def test_truncated_shard_is_named(dataset):
    path = dataset / "train-00000.arrow"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-00000.arrow: .* bytes, the manifest says .*truncated or altered"):
        read_manifest(dataset)


def test_split_too_small_for_the_sequence_length(dataset):
    with pytest.raises(DataError, match="no sequence of 10001 tokens; lower train.seq_len"):
        TokenSequences(dataset, "val", 10_000)


def test_global_batch_larger_than_the_split(dataset):
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchLoader(TokenSequences(dataset, "val", SEQ_LEN), 64, 4, 0, 2, seed=0)


def test_manifest_fingerprint_tracks_content(tmp_path):
    documents = [[1, 2, 3, 4, 5] * 4 for _ in range(10)]
    first = write_dataset(tmp_path / "a", documents)
    same = write_dataset(tmp_path / "b", documents)
    other = write_dataset(tmp_path / "c", documents[:-1] + [[9] * 20])
    assert first["fingerprint"] == same["fingerprint"] != other["fingerprint"]
    assert json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())["totals"]["val"]["documents"] == 3


def test_preflight_refuses_a_dataset_with_a_larger_vocabulary(dataset, tmp_path):
    config = load_config(
        overrides=[
            f"data.output_dir={dataset}",
            "model.vocab_size=512",
            "data.tokenizer.vocab_size=400",
            f"checkpoint.root={tmp_path}",
        ]
    )
    with pytest.raises(ConfigError, match=r"model.vocab_size = 512: smaller than the dataset's tokenizer \(1000\)"):
        check_job(config, resume=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["train.global_batch_size=4096"],
            r"the train split has \d+ sequences of 9 tokens, fewer than one batch of 4096",
        ),
        (["train.eval_batches=500"], r"the val split has \d+ sequences .* raise data.val_fraction"),
    ],
    ids=["train", "val"],
)
def test_preflight_refuses_splits_smaller_than_a_batch(dataset, tmp_path, overrides, message):
    config = load_config(
        overrides=[
            f"data.output_dir={dataset}",
            "model.vocab_size=1000",
            "data.tokenizer.vocab_size=1000",
            "train.seq_len=8",
            "train.micro_batch_size=4",
            "train.global_batch_size=4",
            f"checkpoint.root={tmp_path}",
            *overrides,
        ]
    )
    with pytest.raises(DataError, match=message):
        check_job(config, resume=False)
