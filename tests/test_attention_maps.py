"""`pretrain attention`: heatmaps, raw weights and a terminal table from a tiny model folder."""

import numpy as np
import pytest
from matplotlib.image import imread
from tokenizers import Tokenizer

from pretrain.cli import main
from pretrain.tools.attention_maps import token_labels

TEXT = "The model reads a token and predicts the next one."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(folder, out, *options, text=TEXT):
    return main(["attention", "--checkpoint", str(folder), "--text", text, "--out", str(out), *options])


def test_writes_heatmaps_weights_and_prints_the_chosen_head(tiny_model_folder, tmp_path, capsys):
    out = tmp_path / "maps"
    assert run(tiny_model_folder, out, "--layer", "1", "--head", "1") == 0
    printed = capsys.readouterr().out

    tokenizer = Tokenizer.from_file(str(tiny_model_folder / "tokenizer.json"))
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    labels = token_labels(tokenizer, ids)
    assert "␣model" in labels  # the space before a word is visible

    for name in ("layer_00.png", "layer_01.png", "layer_01_head_01.png"):
        png = out / name
        assert png.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = imread(png).shape
        assert height > 100 and width > 100

    weights = np.load(out / "attention.npz")
    assert list(weights["tokens"]) == labels and list(weights["token_ids"]) == ids
    for layer in ("layer_00", "layer_01"):
        matrix = weights[layer]
        assert matrix.shape == (2, len(ids), len(ids))
        np.testing.assert_allclose(matrix.sum(axis=-1), 1.0, atol=1e-5)  # each query's weights are a distribution
        assert np.all(np.triu(matrix, k=1) == 0)  # causal: no query sees a later key

    lines = printed.splitlines()
    rows = [line for line in lines if line[:4].strip().isdigit()]
    assert len(rows) == len(ids)
    for index, (row, label) in enumerate(zip(rows, labels)):
        assert row.split()[:2] == [str(index), label]
        expected = weights["layer_01"][1, index, 0]
        assert row.split()[2] == f"{expected:.2f}"  # the table is layer 1, head 1
        assert row.split()[3:] == [f"{v:.2f}" for v in weights["layer_01"][1, index, 1 : index + 1]] + ["·"] * (
            len(ids) - 1 - index
        )
    assert lines[0].startswith("layer 1, head 1 (")
    assert str((out / "layer_01_head_01.png").resolve()) in printed
    assert str((out / "attention.npz").resolve()) in printed


def test_default_out_is_attention_in_the_current_folder(tiny_model_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["attention", "--checkpoint", str(tiny_model_folder), "--text", "the next one"]) == 0
    assert sorted(p.name for p in (tmp_path / "attention").iterdir()) == [
        "attention.npz",
        "layer_00.png",
        "layer_00_head_00.png",
        "layer_01.png",
    ]
    assert "layer 0, head 0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options, message",
    [
        (["--layer", "2"], "--layer 2 is out of range; this model has 2 layers: 0 to 1"),
        (["--head", "-1"], "--head -1 is out of range; this model has 2 heads: 0 to 1"),
    ],
)
def test_layer_or_head_out_of_range(tiny_model_folder, tmp_path, capsys, options, message):
    assert run(tiny_model_folder, tmp_path / "maps", *options) == 1
    err = capsys.readouterr().err
    assert err.startswith("pretrain attention: error: ") and message in err
    assert not (tmp_path / "maps").exists()


def test_text_longer_than_max_seq_len(tiny_model_folder, tmp_path, capsys):
    assert (
        run(tiny_model_folder, tmp_path / "maps", text=" ".join(["attention weighs every earlier position"] * 10)) == 1
    )
    err = capsys.readouterr().err
    assert "more than the model's max_seq_len of 32; pass a shorter text" in err
    assert "Traceback" not in err


def test_empty_text(tiny_model_folder, tmp_path, capsys):
    assert run(tiny_model_folder, tmp_path / "maps", text="") == 1
    assert "--text has no tokens" in capsys.readouterr().err


def test_folder_that_is_neither_a_model_nor_a_run(tmp_path, capsys):
    assert run(tmp_path, tmp_path / "maps") == 1
    err = capsys.readouterr().err
    assert "neither an exported model folder (no config.json or model_config.json) nor a run folder" in err


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--checkpoint", "--text", "--out", "--layer", "--head", "--tag"):
        assert option in out
