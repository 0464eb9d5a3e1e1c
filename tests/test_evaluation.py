"""Downstream evaluation: task files read and refused line by line, scores as lm-evaluation-harness computes them,
the validation loss over every held-out sequence, and a trained model scoring above chance on a cloze task made
from its own held-out text. tests/test_export.py compares the scores across layouts, `pretrain eval`,
transformers and lm-eval itself; tests/test_end_to_end.py follows evaluation through a training run."""

import json
import math

import numpy as np
import pytest
import torch
import transformers
import yaml

from data_pipeline.cloze import cloze_examples, held_out_documents
from data_pipeline.loader import BatchLoader
from data_pipeline.shards import read_manifest
from data_pipeline.tokenizer import load_tokenizer
from model import GPT, GPTConfig
from pretrain.cli import main
from pretrain.config import load_config
from pretrain.evaluation.lm_eval_tasks import write_lm_eval_tasks
from pretrain.evaluation.scoring import TaskScorer, encode_pair, task_score
from pretrain.evaluation.tasks import Example, Task, TaskError, load_task, load_tasks
from pretrain.evaluation.validation import ALL, HeldOut, validation_loss
from pretrain.train.optim import lr_multiplier, param_groups
from pretrain.weights.model_folder import load_model_folder
from tests.helpers import ROOT
from tests.test_loader import numbered_documents, write_dataset

GOOD = {"context": "The capital of France is", "choices": [" Paris", " a", " blue"], "gold": 0}


def write_lines(path, *rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_a_json_lines_task_keeps_every_example_and_ignores_other_fields(tmp_path):
    path = write_lines(tmp_path / "capitals.jsonl", GOOD, "", {**GOOD, "gold": 2, "id": "x7", "source": "atlas"})
    task = load_task(path)
    assert task.name == "capitals" and task.delimiter == ""
    choices = (" Paris", " a", " blue")
    assert task.examples == (Example(GOOD["context"], choices, 0), Example(GOOD["context"], choices, 2))


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ({"choices": [" a", " b"], "gold": 0}, "field 'context' is missing"),
        ({"context": "c", "gold": 0}, "field 'choices' is missing"),
        ({"context": "c", "choices": [" a", " b"]}, "field 'gold' is missing"),
        (
            {"context": "c", "choices": [" a", " b"], "gold": 2},
            "field 'gold' must be the index of the right choice, 0 to 1, got 2",
        ),
        ({"context": "c", "choices": [" a", " b"], "gold": True}, "field 'gold'"),
        ({"context": "c", "choices": [], "gold": 0}, "field 'choices' must be a list of at least 2 strings, got []"),
        ({"context": "c", "choices": [" a", ""], "gold": 0}, "field 'choices' item 1 must be a non-empty string"),
        ({"context": " ", "choices": [" a", " b"], "gold": 0}, "field 'context' must be a string with text in it"),
        ('{"context": "c", "choices": [" a"', "not JSON"),
        ("[1, 2]", "a list, not an object"),
    ],
    ids=[
        "no-context",
        "no-choices",
        "no-gold",
        "gold-out-of-range",
        "gold-bool",
        "empty-choices",
        "empty-choice",
        "empty-context",
        "not-json",
        "not-an-object",
    ],
)
def test_a_bad_example_is_named_by_file_line_and_field(tmp_path, line, named):
    path = write_lines(tmp_path / "task.jsonl", GOOD, GOOD, line)
    with pytest.raises(TaskError) as raised:
        load_task(path)
    assert str(raised.value).startswith(f"{path}:3: ") and named in str(raised.value)


def test_an_empty_missing_or_twice_named_task_file_is_refused(tmp_path):
    with pytest.raises(TaskError, match="holds no examples"):
        load_task(write_lines(tmp_path / "empty.jsonl", ""))
    with pytest.raises(TaskError, match="no such task file"):
        load_task(tmp_path / "absent.jsonl")
    (tmp_path / "other").mkdir()
    first, second = write_lines(tmp_path / "t.jsonl", GOOD), write_lines(tmp_path / "other" / "t.jsonl", GOOD)
    with pytest.raises(TaskError, match="would share eval/t/"):
        load_tasks([first, second])


def lm_eval_yaml(tmp_path, **fields) -> str:
    write_lines(tmp_path / "docs.jsonl", {"q": "2 + 2 =", "options": ["3", "4"], "answer": "4"})
    spec = {
        "task": "arith",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": "docs.jsonl"}},
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{q}}\nAnswer:",
        "doc_to_choice": "{{options}}",
        "doc_to_target": "answer",
        **fields,
    }
    path = tmp_path / "arith.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_an_lm_eval_yaml_task_renders_its_templates_as_lm_eval_does(tmp_path):
    task = load_task(lm_eval_yaml(tmp_path))
    assert task.name == "arith" and task.delimiter == " "  # lm-eval's default target_delimiter
    assert task.examples == (Example("Question: 2 + 2 =\nAnswer:", ("3", "4"), 1),)  # the target's text -> index


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"doc_to_text": "{{ q.__class__.__mro__ }}"}, "field 'doc_to_text' on line 1 of its data"),  # sandboxed
        ({"dataset_path": "hellaswag"}, "field 'dataset_path' is 'hellaswag'; pretrain reads local files only"),
        ({"output_type": "generate_until"}, "field 'output_type' must be multiple_choice"),
        ({"num_fewshot": 5}, "field 'num_fewshot'"),
        ({"doc_to_choice": "{{ q }}"}, "field 'doc_to_choice' on line 1 of its data gave '2 + 2 =', not a list"),
    ],
    ids=["template-escape", "download", "generation", "few-shot", "choices-not-a-list"],
)
def test_an_lm_eval_task_that_would_run_code_download_or_score_otherwise_is_refused(tmp_path, fields, named):
    with pytest.raises(TaskError) as raised:
        load_task(lm_eval_yaml(tmp_path, **fields))
    assert named in str(raised.value)


def test_lm_eval_function_tags_are_refused_not_imported(tmp_path):
    path = tmp_path / "arith.yaml"
    lm_eval_yaml(tmp_path)
    path.write_text(path.read_text() + "\nprocess_docs: !function utils.process_docs\n")
    with pytest.raises(TaskError, match="!function utils.process_docs: Python code, which pretrain never runs"):
        load_task(path)


def test_tasks_written_for_lm_eval_read_back_as_the_same_examples(tmp_path):
    source = load_task(write_lines(tmp_path / "capitals.jsonl", GOOD, {**GOOD, "gold": 1}))
    assert write_lm_eval_tasks([source.path], tmp_path / "lm_eval") == ["capitals"]
    again = load_task(tmp_path / "lm_eval" / "capitals.yaml")
    assert (again.name, again.examples, again.delimiter) == (source.name, source.examples, source.delimiter)


def test_accuracy_and_length_normalized_accuracy_follow_lm_eval():
    task = Task("t", None, (Example("c", ("aaaa", "b"), 0), Example("c", ("x", "y"), 1)))
    # Example 0: the summed log-likelihood prefers the short wrong choice, per character the long right one;
    # example 1: a tie goes to the first choice (numpy's argmax, lm-eval's), here the wrong one.
    found = {(0, 0, 0): -4.0, (0, 0, 1): -3.0, (0, 1, 0): -1.0, (0, 1, 1): -1.0}
    score = task_score(task, 0, found)
    assert (score.acc, score.acc_norm, score.n) == (0.0, 0.5, 2)
    assert score.metrics() == {"eval/t/acc": 0.0, "eval/t/acc_norm": 0.5}


def test_a_context_ending_in_a_space_gives_the_space_to_the_choice(tiny_model_folder):
    tokenizer = load_tokenizer(tiny_model_folder / "tokenizer.json")
    context, choice = encode_pair(tokenizer, "the model reads ", "a token")
    assert context == tokenizer.encode("the model reads").ids
    assert context + choice == tokenizer.encode("the model reads a token").ids


def transformers_loglikelihoods(folder, task: Task) -> list[list[float]]:
    """Each choice's summed log-probability by transformers' own model, one request at a time."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    scores = []
    for example in task.examples:
        row = []
        for choice in example.choices:
            context, continuation = encode_pair(tokenizer, example.context, task.delimiter + choice)
            positions = getattr(hf.config, "n_positions", None) or hf.config.max_position_embeddings
            ids = torch.tensor([(context + continuation)[-(positions + 1) :]])
            with torch.no_grad():
                logprobs = torch.log_softmax(hf(ids[:, :-1]).logits[0].float(), dim=-1)
            picked = logprobs[-len(continuation) :].gather(-1, ids[0, -len(continuation) :, None])
            row.append(picked.sum().item())
        scores.append(row)
    return scores


def test_scores_do_not_depend_on_batching_and_equal_transformers(tiny_model_folder, make_documents, tmp_path):
    documents = make_documents(8)
    rows = [
        {"context": doc[:120], "choices": [doc[120:150], documents[(i + 1) % 8][40:70]], "gold": 0}
        for i, doc in enumerate(documents)
    ]  # contexts longer than the model's 32 positions: kept from the left, as lm-eval keeps them
    task = load_task(write_lines(tmp_path / "docs.jsonl", *rows))
    model, tokenizer = load_model_folder(tiny_model_folder)
    model.eval()
    one_by_one = TaskScorer([task], tokenizer, 32, budget_tokens=1).score(model, torch.device("cpu"))[0]
    batched = TaskScorer([task], tokenizer, 32, budget_tokens=4096).score(model, torch.device("cpu"))[0]
    assert np.allclose(batched.loglikelihoods, one_by_one.loglikelihoods, atol=1e-5)
    assert np.allclose(batched.loglikelihoods, transformers_loglikelihoods(tiny_model_folder, task), atol=1e-4)


def test_the_whole_validation_split_is_scored_once_across_ranks_and_per_source(tmp_path):
    write_dataset(tmp_path / "mixed", {"web": numbered_documents(60), "code": numbered_documents(20, 100, seed=1)})
    config = GPTConfig(vocab_size=16_000, max_seq_len=8, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = GPT(config).eval()
    manifest = read_manifest(tmp_path / "mixed")
    common = {"data_dir": tmp_path / "mixed", "manifest": manifest, "seq_len": 8, "micro_batch_size": 4}
    ranks = [HeldOut(**common, batches=ALL, dp=(rank, 2), sources=["web", "code"]) for rank in (0, 1)]
    for index, source_range in enumerate([(0, 6000), (10_000, 16_000)]):
        rows = []
        for held in ranks:
            for inputs, targets in held.micro_batches(held.parts[index]):
                rows += [tuple(row) for row, target in zip(inputs, targets, strict=True) if target[0] != -100]
        # Every sequence of the source exactly once, however the ranks and padding split them.
        assert len(rows) == len(set(rows)) == ranks[0].parts[index].count
        assert all(source_range[0] <= token < source_range[1] for row in rows for token in row)
    whole = validation_loss(model, HeldOut(**common, batches=ALL, sources=["web", "code"]), torch.device("cpu"))
    per_source = {}
    for source in ("web", "code"):
        held = HeldOut(**common, batches=ALL, sources=[source])
        per_source[source] = validation_loss(model, held, torch.device("cpu")).loss
    assert whole.sources == pytest.approx(per_source, rel=1e-6)
    assert whole.sequences == sum(part.count for part in ranks[0].parts) and whole.tokens == 8 * whole.sequences
    assert min(per_source.values()) < whole.loss < max(per_source.values())
    assert set(whole.metrics()) >= {"val_loss", "val_sequences", "val_tokens", "eval/web/loss", "eval/code/loss"}


def test_a_cloze_task_has_distinct_choices_of_equal_length_from_held_out_documents(tiny_data):
    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    documents = held_out_documents(tiny_data)

    def decode(ids):
        return tokenizer.decode([int(i) for i in ids])

    made = cloze_examples(documents, decode, examples=30, choices=4, seed=3)
    assert made == cloze_examples(documents, decode, examples=30, choices=4, seed=3)  # deterministic
    assert len(made) == 30 and {example["gold"] for example in made} == {0, 1, 2, 3}
    held_out_text = "".join(decode(doc) for doc in documents)
    for example in made:
        assert len(set(example["choices"])) == 4
        assert example["context"] + example["choices"][example["gold"]] in held_out_text


def train_in_this_process(data_dir, config: GPTConfig, steps: int) -> GPT:
    """The tiny model trained on the dataset's training split as the tiny job trains it (batch 16 x 64 tokens,
    AdamW at the job's rates), in a plain loop: the model, not the trainer, is what the task scores."""
    job = load_config(ROOT / "configs" / "tiny.yaml", [f"train.max_steps={steps}"])
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = torch.optim.AdamW(param_groups(model, job.optimizer.weight_decay), lr=job.optimizer.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(job))
    loader = BatchLoader(data_dir, "train", 64, 16, 1, 0, 1, seed=0)
    for _ in range(steps):
        ((inputs, targets),) = loader.next_step()
        model(torch.from_numpy(inputs), torch.from_numpy(targets))[1].backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


def test_a_trained_model_beats_chance_on_its_held_out_cloze_task_and_an_untrained_one_does_not(tiny_data, tiny_tasks):
    """The cloze task of tiny_data's held-out text (data_pipeline/cloze.py): the untrained model picks about one
    in four right, the model trained 200 steps (the fewest at which it clearly beats chance) many more."""
    task = load_task(tiny_tasks / "cloze.jsonl")
    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    config = GPTConfig(vocab_size=512, max_seq_len=64, n_layer=2, n_head=2, n_embd=64)  # configs/tiny.yaml's
    scorer = TaskScorer([task], tokenizer, config.max_seq_len, budget_tokens=512)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite's other workers share the cores: a second thread would wait on them
    try:
        untrained = scorer.score(GPT(config).eval(), torch.device("cpu"))[0]
        trained = scorer.score(train_in_this_process(tiny_data, config, steps=200), torch.device("cpu"))[0]
    finally:
        torch.set_num_threads(threads)
    chance, spread = 0.25, math.sqrt(0.25 * 0.75 / untrained.n)  # four choices; the binomial spread at chance
    assert untrained.n == len(task.examples) > 150
    assert abs(untrained.acc - chance) < 3 * spread, untrained.acc
    assert trained.acc > chance + 3 * spread, trained.acc


def test_pretrain_eval_names_a_bad_task_file_without_a_traceback(tiny_model_folder, tmp_path, capsys):
    bad = write_lines(tmp_path / "bad.jsonl", GOOD, {"context": "c", "choices": [" a"], "gold": 0})
    code = main(["eval", "--model", str(tiny_model_folder), "--task", bad, "--no-mlflow"])
    error = capsys.readouterr().err
    assert code == 1 and f"{bad}:2: field 'choices'" in error and "Traceback" not in error


def test_pretrain_data_cloze_writes_a_task_file_that_loads(tiny_data, tmp_path, capsys):
    out = tmp_path / "held-out.jsonl"
    assert main(["data", "cloze", "--dir", str(tiny_data), "--out", str(out), "--examples", "5", "--choices", "3"]) == 0
    assert f"cloze task of 5 examples, 3 choices each: {out}" in capsys.readouterr().out
    assert [len(example.choices) for example in load_task(out).examples] == [3] * 5
