"""The data build against datatrove's pipeline (FineWeb's), on the same corpus and cores, in one run.

    python bench/data_side_by_side.py --mb 100 --datatrove /path/to/venv/bin/python

datatrove runs in its own environment (`pip install "datatrove[processing]" spacy`),
named by --datatrove; this process only times it. Both sides do the same work:

    read JSONL -> Gopher repetition and quality rules -> MinHash near-deduplication
    (word 5-grams, 14 bands x 8 rows = 112 hashes, datatrove's defaults) -> tokenize
    with the same 8,192-token tokenizer (datatrove: DocumentTokenizer)

datatrove's five stages, as its MinHash example runs them: filter (read,
rules, write the kept documents), signatures, buckets, cluster, and the
last (read the kept documents, drop the near-duplicates, tokenize), each a
LocalPipelineExecutor with one task per input file on 2 workers. Ours:
`pretrain data build` in a fresh process (its passes: Ray start, scan with
the rules and signatures, dedup, tokenizer, write). Each side's peak memory
is the largest resident memory of any one of its processes (the driver
apart) and of all together, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from corpus import write_corpus
from data_build import PeakMemory, read_texts

from data_pipeline.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]

DATATROVE = r"""
import json, sys, time
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
)
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.writers import JsonlWriter

def main():  # under a main guard: datatrove's executor starts its workers with forkserver
    corpus, tokenizer, work, tasks, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    config = MinhashConfig()
    tokenize = lambda: DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=tokenizer, eos_token="<|endoftext|>")
    stages = [("tokenize", [JsonlReader(corpus), tokenize()], tasks)] if mode == "tokenize" else [
        ("filter", [JsonlReader(corpus), GopherRepetitionFilter(), GopherQualityFilter(max_non_alpha_words_ratio=None),
                    JsonlWriter(str(work / "kept"), compression=None)], tasks),
        ("signatures", [JsonlReader(str(work / "kept")), MinhashDedupSignature(str(work / "sigs"), config=config)], tasks),
        ("buckets", [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)], config.num_buckets),
        ("cluster", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1),
        ("tokenize", [JsonlReader(str(work / "kept")), MinhashDedupFilter(str(work / "remove")), tokenize()], tasks),
    ]
    seconds = {}
    for name, pipeline, count in stages:
        started = time.perf_counter()
        LocalPipelineExecutor(pipeline, tasks=count, workers=2, logging_dir=str(work / "logs" / name)).run()
        seconds[name] = round(time.perf_counter() - started, 2)
    kept = sum(len(path.read_text().splitlines()) for path in (work / "kept").glob("*.jsonl"))
    tokens = sum(p.stat().st_size for p in (work / "tokens").rglob("*.ds")) // 2
    print(json.dumps({"seconds": seconds, "documents_kept_by_rules": kept, "tokens": tokens}))


if __name__ == "__main__":
    main()
"""


def timed(command: list[str], env: dict | None = None) -> tuple[str, float, PeakMemory]:
    started = time.perf_counter()
    job = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True
    )
    memory = PeakMemory(job.pid)
    while job.poll() is None:
        memory.sample()
        time.sleep(0.2)
    output = job.stdout.read()
    if job.returncode:
        raise SystemExit(f"{command[:3]} failed (exit code {job.returncode})")
    return output, time.perf_counter() - started, memory


def ours(corpus: Path, tokenizer: Path, work: Path, tokenize_only: bool) -> dict:
    cleaning = {
        "preset": "gopher",
        # The corpus spaces its punctuation out as words, which the letters rule would remove: off on both sides.
        "filters": {"gopher_quality": {"min_alpha_words_ratio": 0}},
        "near_dedup": {"enabled": True, "num_hashes": 112, "bands": 14, "rows": 8},
    }
    data = {
        "sources": [{"name": "prose", "paths": [str(corpus)]}],
        "output_dir": str(work / "ours"),
        "shard_size_mb": 32,
        "tokenizer": {"path": str(tokenizer)},
        **({} if tokenize_only else {"cleaning": cleaning}),
    }
    config = work / "ours.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    command = [sys.executable, "-m", "pretrain.cli", "data", "build", "--config", str(config), "--force"]
    _, seconds, memory = timed(command)
    manifest = json.loads((work / "ours" / "manifest.json").read_text())
    source = manifest["sources"]["prose"]
    tokens = sum(split["tokens"] for split in manifest["totals"].values())
    return {
        "seconds": seconds,
        "stages": manifest["stats"]["pass_seconds"],
        "documents_in": source["documents_in"],
        "documents_kept_by_rules": source["documents_in"] - sum(source["filtered"].values()),
        "documents_written": source["documents_written"],
        "tokens": tokens,
        "memory": memory,
    }


def datatrove(python: str, corpus: Path, tokenizer: Path, work: Path, tasks: int, tokenize_only: bool) -> dict:
    folder = work / "datatrove"
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    script = work / "datatrove_pipeline.py"
    script.write_text(DATATROVE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mode = "tokenize" if tokenize_only else "full"
    output, seconds, memory = timed(
        [python, str(script), str(corpus), str(tokenizer), str(folder), str(tasks), mode], env
    )
    result = json.loads(output.strip().splitlines()[-1])
    return {**result, "stages": result.pop("seconds"), "seconds": seconds, "memory": memory}


def report(name: str, result: dict, documents: int) -> str:
    memory = result["memory"]
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result["stages"].items())
    return (
        f"| {name} | {result['seconds']:.1f} | {documents / result['seconds']:,.0f} | "
        f"{result['tokens'] / result['seconds'] / 1e6:.2f} | {result['tokens']:,} | "
        f"{memory.driver / 2**30:.2f} / {memory.worker / 2**30:.2f} / {memory.total / 2**30:.2f} | {stages} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100, help="corpus size")
    parser.add_argument("--datatrove", required=True, help="a Python interpreter with datatrove installed")
    parser.add_argument("--tokenize-only", action="store_true", help="read and tokenize only, no rules or MinHash")
    parser.add_argument("--rounds", type=int, default=1, help="ours then datatrove, this many times")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        files = write_corpus(work / "corpus", args.mb)
        documents = sum(len(read_texts(path)) for path in files)
        tokenizer = work / "tokenizer.json"
        train_tokenizer(read_texts(files[0]), 8192).save(str(tokenizer))
        print(f"corpus: {args.mb:.0f} MB, {len(files)} files, {documents:,} documents; {os.cpu_count()} cores")
        print("| side | seconds | documents/s | M tokens/s | tokens | peak GiB: driver / any worker / all | stages |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        ratios = []
        for _ in range(args.rounds):
            mine = ours(work / "corpus", tokenizer, work, args.tokenize_only)
            theirs = datatrove(args.datatrove, work / "corpus", tokenizer, work, len(files), args.tokenize_only)
            print(report("pretrain data build", mine, documents))
            print(report("datatrove", theirs, documents))
            ratios.append(theirs["seconds"] / mine["seconds"])
            print(
                f"documents kept by the rules: ours {mine['documents_kept_by_rules']:,}, "
                f"datatrove {theirs['documents_kept_by_rules']:,}; written by ours {mine['documents_written']:,}"
            )
        print(f"end to end, ours / datatrove throughput: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
