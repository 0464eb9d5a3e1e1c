"""A large English-like corpus for benchmarks, made here (no download).

Words are drawn with the frequencies they have in the docstrings of Python's
standard library (tens of thousands of distinct English words and
identifiers), so the tokenizer sees realistic prose statistics.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from data_pipeline.config import embedded_source
from data_pipeline.readers import read_records
from data_pipeline.sources import list_source_files


def word_frequencies() -> tuple[list[str], np.ndarray]:
    counts: Counter = Counter()
    for input_file in list_source_files(embedded_source()):
        for text in read_records(input_file):  # the embedded corpus has no rejects
            counts.update(re.findall(r"[A-Za-z][A-Za-z']*|[0-9]+|[.,;:()]", text))
    words, freq = zip(*counts.most_common())
    return list(words), np.array(freq, dtype=np.float64) / sum(freq)


def write_corpus(out_dir: Path, total_mb: float, file_mb: float = 8, seed: int = 0) -> list[Path]:
    """JSONL files of about `file_mb` each, `total_mb` in all; documents of 100 to 3000 words."""
    out_dir.mkdir(parents=True, exist_ok=True)
    words, probabilities = word_frequencies()
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(probabilities)
    files, written = [], 0
    while written < total_mb * 1e6:
        path = out_dir / f"part-{len(files):04d}.jsonl"
        with open(path, "w") as f:
            size = 0
            while size < file_mb * 1e6:
                length = int(rng.integers(100, 3000))
                picks = np.minimum(np.searchsorted(cdf, rng.random(length)), len(words) - 1)
                text = " ".join(words[i] for i in picks)
                line = json.dumps({"text": text}) + "\n"
                f.write(line)
                size += len(line)
        files.append(path)
        written += path.stat().st_size
    return files
