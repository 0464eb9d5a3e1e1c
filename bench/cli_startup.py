"""What `pretrain train` and `pretrain submit` pay in imports: the command that launches, and each rank.

    .venv/bin/python bench/cli_startup.py               # 5 repeats
    .venv/bin/python bench/cli_startup.py --repeats 9

Each figure is a fresh interpreter importing what the launching command
imports (config, preflight, the launch targets: `pretrain.jobs.submit`),
timed from the outside; the median of `--repeats`. The baseline is the same
imports plus torch, which the launcher paid before the run folder's
checkpoint listing (`pretrain/weights/checkpoint_folder.py`) was split from
the torch code that saves and loads. A rank imports torch and DeepSpeed
anyway; the launcher, which only reads files and starts torchrun, does not
need to. The last two rows are a rank's imports: rank 0's, and another
rank's, which refuses the MLflow that DeepSpeed would import
(`pretrain/cli/commands.py`, `cmd_train`); compare them with each other.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "the launcher's imports (pretrain.jobs.submit)": "import pretrain.jobs.submit",
    "baseline: the same, and torch": "import pretrain.jobs.submit, torch",
    "rank 0's (pretrain.train.loop)": "import pretrain.train.loop",
    "another rank's (the same, MLflow refused)": "import sys; sys.modules['mlflow'] = None; import pretrain.train.loop",
}


def seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds("import pretrain.train.loop")  # warm the page cache and the bytecode caches
    times = {name: statistics.median(seconds(stmt) for _ in range(args.repeats)) for name, stmt in CASES.items()}
    baseline = times["baseline: the same, and torch"]
    print("| imports | seconds | x baseline |\n| --- | --- | --- |")
    for name, value in times.items():
        print(f"| {name} | {value:.2f} | {value / baseline:.2f} |")


if __name__ == "__main__":
    main()
