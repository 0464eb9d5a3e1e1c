"""nanoGPT's checkpoints come in: a `ckpt.pt` saved as nanoGPT's train.py saves it, from nanoGPT's own model
(tests/nanogpt_model.py, a copy of its model.py), gives our GPT the same logits, and Hugging Face's too."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from model import GPT
from pretrain.cli import main
from pretrain.weights.model_folder import load_model_folder
from pretrain.weights.nanogpt import read_nanogpt_checkpoint
from tests import nanogpt_model as nanogpt

VOCAB = 320


def trained_nanogpt(bias: bool) -> nanogpt.GPT:
    """nanoGPT's GPT after a few AdamW steps of its own optimizer: weights away from their initial values."""
    torch.manual_seed(0)
    config = nanogpt.GPTConfig(block_size=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=bias)
    model = nanogpt.GPT(config)
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    for _ in range(3):
        tokens = torch.randint(0, VOCAB, (4, 17))
        _, loss = model(tokens[:, :-1], tokens[:, 1:].contiguous())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def save_like_nanogpt(model: nanogpt.GPT, path, compiled: bool) -> None:
    """What nanoGPT's train.py writes: a compiled model's state dict carries torch.compile's prefix."""
    state = model.state_dict()
    if compiled:
        state = {f"_orig_mod.{name}": tensor for name, tensor in state.items()}
    model_args = {key: getattr(model.config, key) for key in ("n_layer", "n_head", "n_embd", "block_size", "bias")}
    model_args |= {"vocab_size": VOCAB, "dropout": 0.0}
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    checkpoint = {
        "model": state,
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 3,
        "best_val_loss": torch.tensor(4.25),
        "config": {"batch_size": 4, "learning_rate": 1e-2, "compile": compiled, "dataset": "shakespeare"},
    }
    torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 20, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tokenizer.train_from_iterator(["to be or not to be, that is the question"] * 20, trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def nanogpt_logits(model: nanogpt.GPT, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = model(tokens, tokens)  # with targets, nanoGPT returns every position's logits
    return logits


@pytest.mark.parametrize("bias, compiled", [(True, True), (False, False)], ids=["bias, compiled", "no bias"])
def test_a_nanogpt_checkpoint_imports_with_nanogpts_logits(tmp_path, tokenizer_file, capsys, bias, compiled):
    reference = trained_nanogpt(bias)
    save_like_nanogpt(reference, tmp_path / "ckpt.pt", compiled)
    out = tmp_path / "imported"
    options = ["--from-nanogpt", str(tmp_path / "ckpt.pt"), "--tokenizer", str(tokenizer_file), "--format", "torch"]
    assert main(["export", *options, "--out", str(out)]) == 0
    assert f"train from it with train.init_from={out}" in capsys.readouterr().out
    model, _ = load_model_folder(out)
    assert model.config.mlp == "gelu_exact" and model.config.bias is bias
    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    expected = nanogpt_logits(reference, tokens)
    with torch.no_grad():
        exact_error = (model(tokens)[0] - expected).abs().max()
        # The tanh GELU on the same weights is another model: the exact one is what makes the logits equal.
        approximate = GPT(model.config.__class__(**{**model.config.__dict__, "mlp": "gelu"}))
        approximate.load_state_dict(model.state_dict())
        tanh_error = (approximate(tokens)[0] - expected).abs().max()
    assert exact_error < 1e-5 and tanh_error > 100 * exact_error, (exact_error, tanh_error)
    assert json.loads((out / "export_info.json").read_text())["iter_num"] == 3


def test_a_nanogpt_checkpoint_exported_for_hugging_face_has_the_same_logits_in_transformers(tmp_path, tokenizer_file):
    from transformers import GPT2LMHeadModel

    reference = trained_nanogpt(bias=True)
    save_like_nanogpt(reference, tmp_path / "ckpt.pt", compiled=False)
    out = tmp_path / "hf"
    options = ["--from-nanogpt", str(tmp_path / "ckpt.pt"), "--tokenizer", str(tokenizer_file), "--out", str(out)]
    assert main(["export", *options]) == 0
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu"  # the exact GELU
    assert load_model_folder(out)[0].config.mlp == "gelu_exact"  # and read back as such
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, nanogpt_logits(reference, tokens), rtol=0, atol=1e-5)


def test_what_is_not_a_nanogpt_checkpoint_is_named(tmp_path, tokenizer_file, capsys):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(Exception, match=r"other.pt: not a nanoGPT checkpoint \(a dict with 'model' and 'model_args'\)"):
        read_nanogpt_checkpoint(tmp_path / "other.pt")
    reference = trained_nanogpt(bias=False)
    save_like_nanogpt(reference, tmp_path / "ckpt.pt", compiled=False)
    assert main(["export", "--from-nanogpt", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "x")]) == 1
    assert "--from-nanogpt needs --tokenizer FILE (its tokenizer.json) and --out FOLDER" in capsys.readouterr().err
    missing = ["--tokenizer", str(tmp_path / "none.json"), "--out", str(tmp_path / "x")]
    assert main(["export", "--from-nanogpt", str(tmp_path / "ckpt.pt"), *missing]) == 1
    assert "nanoGPT keeps no tokenizer in its checkpoint: pass the tokenizer.json" in capsys.readouterr().err


def test_train_init_from_takes_a_nanogpt_checkpoint_as_it_is(tmp_path):
    """The model section comes from the file's model_args, the weights from its state dict: what the training
    loop loads (pretrain/weights/model_folder.py's folder_state_dict) gives nanoGPT's logits."""
    from pretrain.config import load_config
    from pretrain.train.preflight import check_init_from_tokenizer
    from pretrain.weights.model_folder import folder_state_dict

    reference = trained_nanogpt(bias=False)
    save_like_nanogpt(reference, tmp_path / "ckpt.pt", compiled=True)
    fits = ["train.seq_len=32", "data.tokenizer.vocab_size=300"]  # the context and vocabulary of this tiny model
    config = load_config(overrides=[f"train.init_from={tmp_path / 'ckpt.pt'}", "model.dropout=0.1", *fits])
    assert (config.model.mlp, config.model.max_seq_len, config.model.bias) == ("gelu_exact", 32, False)
    assert config.model.dropout == 0.1  # the config's own, as for any init_from
    check_init_from_tokenizer(config)  # nanoGPT saves no tokenizer: nothing to compare, no error
    model = GPT(config.model).eval()
    model.load_state_dict(folder_state_dict(tmp_path / "ckpt.pt", config.model))
    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], nanogpt_logits(reference, tokens), rtol=0, atol=1e-5)
