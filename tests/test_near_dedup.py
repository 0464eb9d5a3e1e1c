"""Near-duplicate removal against the truth: planted word edits, exact Jaccard by brute force.

The partition and cluster steps run here as plain functions on files, as
the build's Ray tasks run them (tests/test_data_build.py runs them in Ray,
killed and resumed, and on two nodes).
"""

import itertools
import random

import numpy as np
import pytest

from data_pipeline.cleaning import content_hash
from data_pipeline.config import DataConfig
from data_pipeline.dedup import cluster_near_duplicates, dedup_partition, minhasher, removed_in_unit, save_unit_keys
from data_pipeline.layout import WORK_DIR
from data_pipeline.minhash import choose_bands

NGRAM, THRESHOLD = 5, 0.8
ABOVE, BELOW = (1, 2, 3), (12, 16, 20)  # words replaced: Jaccard about 0.97, 0.94, 0.91 and 0.66, 0.57, 0.49


def planted_corpus(families: int, seed: int = 0) -> list[str]:
    """Each family: a document of 300 random words, then copies with words replaced at least 10 words apart."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(20_000)]
    documents = []
    for _ in range(families):
        base = rng.choices(vocabulary, k=300)
        documents.append(base)
        for edits in ABOVE + BELOW:
            variant = list(base)
            for position in rng.sample(range(0, 300, 10), edits):
                variant[position] = rng.choice(vocabulary)
            documents.append(variant)
    return [" ".join(words) for words in documents]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def shingles(text: str) -> set:
    words = text.split()
    return {" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def deduplicate(tmp_path, units: list[list[str]], parts: int) -> list[np.ndarray]:
    """Run the build's dedup steps on these units' documents; the near-duplicate rows of each unit."""
    out_dir = tmp_path / f"parts-{parts}"
    (out_dir / WORK_DIR).mkdir(parents=True)
    config = DataConfig(cleaning={"near_dedup": {"enabled": True, "threshold": THRESHOLD, "ngram": NGRAM}})
    hasher = minhasher(config)
    for index, texts in enumerate(units):
        signatures = hasher.signatures(texts)
        save_unit_keys(out_dir, index, b"".join(map(content_hash, texts)), signatures, config, parts)
    for part in range(parts):
        dedup_partition(out_dir, len(units), part, config)
    cluster_near_duplicates(out_dir, parts, config)
    return [removed_in_unit(out_dir, i, len(texts), parts, config) for i, texts in enumerate(units)]


@pytest.fixture(scope="module")
def planted():
    documents = planted_corpus(families=40)
    sets = [shingles(t) for t in documents]
    truth = {(i, j): jaccard(sets[i], sets[j]) for i, j in itertools.combinations(range(len(documents)), 2)}
    return documents, truth


def test_recall_and_precision_on_planted_near_duplicates(planted, tmp_path):
    documents, truth = planted
    similar = [pair for pair, value in truth.items() if value >= THRESHOLD]
    assert min(truth[pair] for pair in similar) > 0.84 and max(v for v in truth.values() if v < THRESHOLD) < 0.7
    # Three units, a document of the first repeated exactly in the last: counted as a duplicate, not a near one.
    units = [documents[:100], documents[100:200], documents[200:] + [documents[0]]]
    results = deduplicate(tmp_path, units, parts=3)
    position_of = {(u, p): sum(map(len, units[:u])) + p for u in range(3) for p in range(len(units[u]))}
    kept = np.concatenate([~(exact | near) for exact, near, _ in results])
    exact_total = sum(int(exact.sum()) for exact, _, _ in results)
    assert exact_total == 1 and results[2][0][-1]
    # Recall: a pair above the threshold keeps at most one of its documents.
    found = sum(not (kept[i] and kept[j]) for i, j in similar)
    recall = found / len(similar)
    # Precision: each removed document resembles the one it was removed for.
    pairs = [
        tuple(sorted(position_of[int(v) >> 32, int(v) & 0xFFFFFFFF] for v in (row["order"], row["kept"])))
        for _, near, rows in results
        for row in rows
        if near[int(row["order"]) & 0xFFFFFFFF]  # not the exact copy, which is counted as a duplicate
    ]
    precision = sum(truth[pair] >= THRESHOLD for pair in pairs) / len(pairs)
    print(f"recall {recall:.4f} of {len(similar)} pairs, precision {precision:.4f} of {len(pairs)} removed")
    assert recall >= 0.95 and precision >= 0.99
    assert sum(int(near.sum()) for _, near, _ in results) == 40 * len(ABOVE)  # one kept per family
    # The same documents are removed however the keys are partitioned.
    again = deduplicate(tmp_path, units, parts=1)
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0]) for a, b in zip(results, again))


def test_band_choice_keeps_pairs_at_the_threshold():
    bands, rows = choose_bands(0.8, 128)
    assert bands * rows <= 128
    assert 1 - (1 - 0.8**rows) ** bands >= 0.99
    assert 1 - (1 - 0.2**rows) ** bands < 0.01  # unrelated documents are seldom even compared
