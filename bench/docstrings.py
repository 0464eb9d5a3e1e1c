"""Reading the embedded corpus (the docstrings of Python's standard library): the project's reader, which
visits the statements of each file's syntax tree, against the same reader visiting every node (`ast.walk`),
which finds the same documents in the same order.

    .venv/bin/python bench/docstrings.py               # 3 rounds, alternating
    .venv/bin/python bench/docstrings.py --rounds 5

Each round reads every file as a build does (`read_records`: the bytes, the parse, the docstrings). A build
reads the corpus three times (scan, tokenizer sample, write); `make demo` and the tests' tiny dataset read it.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time

from data_pipeline import readers
from data_pipeline.config import SourceConfig
from data_pipeline.sources import list_source_files

STATEMENTS = readers._statements


def read_all(files, visit) -> tuple[float, list[str]]:
    readers._statements = visit
    started = time.perf_counter()
    documents = [text for file in files for text in readers.read_records(file)]
    return time.perf_counter() - started, documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    files = list_source_files(SourceConfig(name="stdlib", format="python-docstrings"))
    ways = {"every node (ast.walk)": ast.walk, "statements (the reader)": STATEMENTS}
    times = {name: [] for name in ways}
    for _ in range(args.rounds):
        found = {}
        for name, visit in ways.items():
            seconds, found[name] = read_all(files, visit)
            times[name].append(seconds)
        assert len(set(map(tuple, found.values()))) == 1, "the two ways found different documents"
    documents = len(found[name])
    print(f"{len(files)} files, {documents:,} documents, {args.rounds} rounds")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:26s} median {median:6.2f} s  {documents / median:8,.0f} documents/s")
    baseline, ours = medians.values()
    print(f"ratio (every node / the reader): {baseline / ours:.2f}")


if __name__ == "__main__":
    main()
