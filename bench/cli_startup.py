"""What `pretrain train` and `pretrain submit` pay in imports: the command that launches, and each rank.

    .venv/bin/python bench/cli_startup.py               # 5 repeats
    .venv/bin/python bench/cli_startup.py --repeats 9

Each figure is a fresh interpreter importing what the launching command
imports (config, preflight, the launch targets: `pretrain.jobs.submit` and
`pretrain.train.preflight`), timed from the outside; the median of
`--repeats`. The baseline is the same imports plus torch, which the launcher
paid before the run folder's checkpoint listing
(`pretrain/weights/checkpoint_folder.py`) and the check of a layout change
(`pretrain/weights/layout_change.py`) were split from the torch code that
saves, loads and converts. A rank imports torch and DeepSpeed anyway; the
launcher, which only reads files and starts torchrun, does not need to.
The next rows are a rank's imports: rank 0's, and another rank's, which
refuses the MLflow that DeepSpeed would import (`pretrain/cli/commands.py`,
`cmd_train`); compare them with each other. The last row is rank 0's
imports exiting as a rank now does, its objects frozen out of Python's last
garbage collection (`entry_point` in `pretrain/cli/__init__.py`); compare it
with rank 0's row.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

LAUNCHER = "import pretrain.jobs.submit, pretrain.train.preflight"
CASES = {
    "the launcher's imports (pretrain.jobs.submit, pretrain.train.preflight)": LAUNCHER,
    "baseline: the same, and torch": LAUNCHER + ", torch",
    "rank 0's (pretrain.train.loop)": "import pretrain.train.loop",
    "another rank's (the same, MLflow refused)": "import sys; sys.modules['mlflow'] = None; import pretrain.train.loop",
    "rank 0's, exiting frozen (gc.freeze)": "import gc, pretrain.train.loop; gc.freeze()",
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
