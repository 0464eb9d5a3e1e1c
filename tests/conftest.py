"""Shared test data: every test makes its own, nothing is downloaded."""

import gzip
import json
import random
from pathlib import Path

import pytest

WORDS = (
    "the model reads a token and predicts the next one from all that came before it "
    "attention weighs every earlier position while the feed forward network mixes features "
    "residual connections carry the signal through deep stacks of identical blocks"
).split()


def synthetic_documents(count: int, seed: int = 0) -> list[str]:
    """Distinct documents of English-like sentences, long enough to pass the minimum length."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in range(rng.randint(3, 8))]
        documents.append(f"Document {index}. " + " ".join(sentences))
    return documents


@pytest.fixture(scope="session")
def make_documents():
    return synthetic_documents


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    """A small corpus in every supported layout, with two exact duplicates across files."""
    documents = synthetic_documents(400)
    folder = tmp_path / "corpus"
    folder.mkdir()
    with open(folder / "part-a.jsonl", "w") as f:
        for text in documents[:200] + documents[:2]:  # two duplicates
            f.write(json.dumps({"text": text, "id": len(text)}) + "\n")
    with gzip.open(folder / "part-b.jsonl.gz", "wt") as f:
        for text in documents[200:390]:
            f.write(json.dumps({"text": text}) + "\n")
    for index, text in enumerate(documents[390:]):
        (folder / f"doc-{index}.txt").write_text(text)
    (folder / "notes.md").write_text("not a corpus file; ignored inside folders")
    return folder
