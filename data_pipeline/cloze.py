"""A cloze task made from a dataset's held-out text: which continuation is the document's own?

Each example takes a document of the validation split (text the model never
trains on), cuts it at a token, and asks which of several continuations of
`choice_tokens` tokens comes next: the document's own, or the same number of
tokens taken from another held-out document at a random place. Every choice
is as many tokens long, so a summed log-likelihood favours none for its
length: a model that learned the language prefers the continuation that fits
what came before (often the rest of a word), and an untrained one picks about
one in `choices` right (chance). Short choices (2 tokens by default) make the
fit with the context the whole signal: over longer ones, how common each
choice's own words are outweighs it (with the tiny test model, 10-token
choices scored at chance where 2-token ones scored 0.54). The file is the JSON lines task format of
pretrain/evaluation/tasks.py, `{"context", "choices", "gold"}`.

Deterministic: the same dataset and seed give the same file.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.layout import TOKENIZER_NAME, write_atomically
from data_pipeline.shards import read_manifest, tokens_column
from data_pipeline.tokenizer import load_tokenizer


def held_out_documents(data_dir: Path) -> list[np.ndarray]:
    """The token ids of every document of the validation split, in the shards' order."""
    manifest = read_manifest(data_dir)
    documents = []
    for shard in manifest["shards"]:
        if shard["split"] == "val":
            column = tokens_column(data_dir / shard["file"])
            values, offsets = column.values.to_numpy(), column.offsets.to_numpy()
            documents += [values[start:end] for start, end in itertools.pairwise(offsets)]
    return documents


def cloze_examples(
    documents: list[np.ndarray],
    decode,
    examples: int,
    choices: int = 4,
    choice_tokens: int = 2,
    context_tokens: int = 48,
    seed: int = 0,
) -> list[dict]:
    """Up to `examples` examples, each from another document of at least 16 + `choice_tokens` tokens (one whose
    cut falls on blank text makes none);
    `decode` turns token ids into text. Distractors come from the other documents, all choices distinct."""
    rng = np.random.default_rng(seed)
    usable = [i for i, tokens in enumerate(documents) if len(tokens) >= 16 + choice_tokens]
    if len(usable) < choices:
        raise DataError(
            f"the validation split holds {len(usable)} documents of {16 + choice_tokens} tokens or more; a cloze "
            f"task of {choices} choices needs at least {choices}; raise data.val_fraction or lower --choices"
        )
    made = []
    for doc in rng.permutation(usable):
        if len(made) == examples:
            break
        tokens = documents[doc]
        cut = int(rng.integers(16, len(tokens) - choice_tokens + 1))
        context = decode(tokens[max(0, cut - context_tokens) : cut])
        options = [decode(tokens[cut : cut + choice_tokens])]
        for other in rng.permutation([i for i in usable if i != doc]):
            start = int(rng.integers(0, len(documents[other]) - choice_tokens + 1))
            text = decode(documents[other][start : start + choice_tokens])
            if text.strip() and text not in options:
                options.append(text)
            if len(options) == choices:
                break
        if not context.strip() or not options[0].strip() or len(options) < choices:
            continue
        gold = int(rng.integers(choices))
        options[0], options[gold] = options[gold], options[0]
        made.append({"context": context, "choices": options, "gold": gold})
    return made


def write_cloze_task(
    data_dir: str | Path, out: str | Path, examples: int, choices: int = 4, choice_tokens: int = 2, seed: int = 0
) -> Path:
    """The task file `out`, made from the dataset in `data_dir`; returns its path."""
    if examples < 1 or choices < 2 or choice_tokens < 1:
        raise DataError(
            f"a cloze task needs 1 or more examples, 2 or more choices and 1 or more tokens a choice, not "
            f"{examples}, {choices} and {choice_tokens}"
        )
    data_dir = Path(data_dir)
    tokenizer = load_tokenizer(data_dir / TOKENIZER_NAME)

    def decode(ids) -> str:
        return tokenizer.decode([int(i) for i in ids])

    made = cloze_examples(held_out_documents(data_dir), decode, examples, choices, choice_tokens, seed=seed)
    text = "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in made)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(Path(out), text)
