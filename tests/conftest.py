"""Shared test data: every test makes its own, nothing is downloaded."""

import gzip
import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

WORDS = [
    "the",
    "model",
    "reads",
    "a",
    "token",
    "and",
    "predicts",
    "the",
    "next",
    "one",
    "from",
    "all",
    "that",
    "came",
    "before",
    "it",
    "attention",
    "weighs",
    "every",
    "earlier",
    "position",
    "while",
    "the",
    "feed",
    "forward",
    "network",
    "mixes",
    "features",
    "residual",
    "connections",
    "carry",
    "the",
    "signal",
    "through",
    "deep",
    "stacks",
    "of",
    "identical",
    "blocks",
]


def synthetic_documents(count: int, seed: int = 0) -> list[str]:
    """Distinct documents of English-like sentences, long enough to pass the minimum length."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        sentences = [
            " ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in range(rng.randint(3, 8))
        ]
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, shared by the session (an idle one holds GBs of memory)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise RuntimeError(f"mlflow server did not start; see {root / 'server.log'}")
        time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory, make_documents):
    """An exported folder (as `pretrain export` writes) of a random 2-layer GPT and a small BPE tokenizer."""
    import torch

    from data_pipeline.tokenizer import train_tokenizer
    from model import GPT, GPTConfig
    from pretrain.model_folder import write_model_folder

    root = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(make_documents(50), vocab_size=400)
    tokenizer.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.get_vocab_size(), max_seq_len=32, n_layer=2, n_head=2, n_embd=32)
    return write_model_folder(GPT(config), root / "tokenizer.json", root / "model", {"test": True})
