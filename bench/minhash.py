"""How fast MinHash signatures are made, per way of hashing: why data_pipeline/minhash.py hashes as it does.

    python bench/minhash.py --documents 2000
    python bench/minhash.py --documents 2000 --datatrove /path/to/venv/bin/python   # also datatrove's, in its venv
    python bench/minhash.py --dedup-documents 1000000      # the dedup and cluster steps' rates instead

Every way makes 128-value signatures of word 5-grams of the same documents
(bench/corpus.py: 100 to 3,000 words each) on one core, in this process:

- ours (the build's code): each word hashed once (XXH3), n-gram hashes
  combined from word hashes with numpy, rensa's batch MinHash over them;
- the same n-gram hashes permuted by a numpy multiply-shift instead;
- each n-gram string hashed with XXH3, then the numpy permutation;
- rensa RMinHash fed the n-gram strings, one document at a time;
- datasketch MinHash.update_batch (SHA-1 of each n-gram);
- datatrove's MinhashDedupSignature (its word tokenizer, 14 x 8 = 112 hashes,
  its default), when --datatrove names a Python that has it.

datasketch is measured only when installed (it is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).parent))
from corpus import write_corpus

from data_pipeline.minhash import MinHasher

NGRAM, HASHES = 5, 128

DATATROVE = """
import json, sys, time, tempfile
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
texts = [json.loads(line)["text"] for line in open(sys.argv[1])]
step = MinhashDedupSignature(output_folder=tempfile.mkdtemp(), config=MinhashConfig())
step.get_signature(step.get_shingles(texts[0]))  # loads the word tokenizer
started = time.perf_counter()
for text in texts:
    step.get_signature(step.get_shingles(text))
print(time.perf_counter() - started)
"""


def shingle_strings(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))]


def ways(hasher: MinHasher) -> dict:
    found = {"ours: word XXH3, numpy n-grams, rensa batch": lambda texts: hasher.signatures(texts)}
    a, b = (np.random.default_rng(0).integers(1, 2**63, size=HASHES, dtype=np.uint64) for _ in range(2))

    def numpy_permutation(texts):
        for text in texts:
            with np.errstate(over="ignore"):
                ((hasher.shingle_hashes(text)[:, None] * (a | np.uint64(1)) + b) >> np.uint64(32)).min(axis=0)

    found["word XXH3, numpy n-grams, numpy multiply-shift"] = numpy_permutation

    def shingles_then_numpy(texts):
        for text in texts:
            hashes = np.fromiter((xxhash.xxh3_64_intdigest(s.encode()) for s in shingle_strings(text)), np.uint64)
            with np.errstate(over="ignore"):
                ((hashes[:, None] * (a | np.uint64(1)) + b) >> np.uint64(32)).min(axis=0)

    found["shingle strings XXH3 + numpy permutation"] = shingles_then_numpy
    try:
        import rensa

        def rensa_strings(texts):
            for text in texts:
                sketch = rensa.RMinHash(num_perm=HASHES, seed=1)
                sketch.update(shingle_strings(text))
                sketch.digest()

        found["rensa RMinHash on shingle strings"] = rensa_strings
    except ImportError:
        pass
    try:
        from datasketch import MinHash

        def datasketch_way(texts):
            for text in texts:
                MinHash(num_perm=HASHES).update_batch([s.encode() for s in shingle_strings(text)])

        found["datasketch MinHash.update_batch (SHA-1)"] = datasketch_way
    except ImportError:
        pass
    return found


def dedup_rates(count: int) -> None:
    """The partition step (sort exact and band keys) and the cluster step on `count` documents' keys, one core.

    Random content hashes and signatures, with 10% of the documents given the
    signature of another (their candidate pairs are checked and clustered).
    """
    from data_pipeline.config import DataConfig
    from data_pipeline.dedup import cluster_near_duplicates, dedup_partition, minhasher, save_unit_keys
    from data_pipeline.layout import WORK_DIR

    config = DataConfig(cleaning={"near_dedup": {"enabled": True}})
    bands = minhasher(config).bands
    rng = np.random.default_rng(0)
    units = 10
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        (out_dir / WORK_DIR).mkdir()
        for unit in range(units):
            size = count // units
            signatures = rng.integers(0, 2**32, size=(size, HASHES), dtype=np.uint32)
            copies = rng.random(size) < 0.1
            signatures[copies] = signatures[rng.integers(0, size, int(copies.sum()))]
            save_unit_keys(out_dir, unit, rng.bytes(16 * size), signatures, config, parts=1)
        started = time.perf_counter()
        marker = dedup_partition(out_dir, units, 0, config)
        partition = time.perf_counter() - started
        started = time.perf_counter()
        cluster = cluster_near_duplicates(out_dir, 1, config)
        clustering = time.perf_counter() - started
    print(f"partition step: {count:,} documents ({bands} bands) in {partition:.1f} s = {count / partition:,.0f} docs/s")
    pairs = marker["candidate_pairs"]
    print(
        f"cluster step: {pairs:,} candidate pairs in {clustering:.1f} s = {pairs / clustering:,.0f} pairs/s; "
        f"{cluster['removed']:,} documents removed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--datatrove", help="a Python interpreter with datatrove installed")
    parser.add_argument("--dedup-documents", type=int, help="measure the dedup and cluster steps on this many")
    args = parser.parse_args()
    if args.dedup_documents:
        dedup_rates(args.dedup_documents)
        return
    with tempfile.TemporaryDirectory() as tmp:
        size = args.documents * 0.0095  # MB: about 9.5 KB a document
        (path,) = write_corpus(Path(tmp), total_mb=size, file_mb=size)
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines()][: args.documents]
        words = sum(len(t.split()) for t in texts)
        print(f"{len(texts)} documents, {words / len(texts):.0f} words each on average; one core\n")
        hasher = MinHasher(NGRAM, HASHES, 21, 6, 1)
        results = {}
        for name, run in ways(hasher).items():
            run(texts[:20])  # warm
            started = time.perf_counter()
            run(texts)
            results[name] = len(texts) / (time.perf_counter() - started)
        if args.datatrove:
            script = Path(tmp) / "datatrove_signatures.py"
            script.write_text(DATATROVE)
            small = Path(tmp) / "sample.jsonl"
            small.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
            seconds = float(subprocess.check_output([args.datatrove, str(script), str(small)], text=True).split()[-1])
            results["datatrove MinhashDedupSignature (112 hashes)"] = len(texts) / seconds
    ours = results["ours: word XXH3, numpy n-grams, rensa batch"]
    print("| way | documents/s | ours / this |\n| --- | --- | --- |")
    for name, rate in results.items():
        print(f"| {name} | {rate:,.0f} | {ours / rate:.2f} |")


if __name__ == "__main__":
    main()
