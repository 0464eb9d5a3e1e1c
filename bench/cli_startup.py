"""What `pretrain train` and `pretrain submit` pay in imports: the command that launches, and each rank.

    .venv/bin/python bench/cli_startup.py               # 5 repeats
    .venv/bin/python bench/cli_startup.py --repeats 9

Each figure is a fresh interpreter importing what the launching command
imports (config, preflight, the launch targets: `pretrain.jobs.submit` and
`pretrain.train.preflight`), timed from the outside (seconds, and the CPU
seconds it used); the median of `--repeats` rounds, each of which runs every
case once. The baseline is the same imports plus torch, which the launcher
paid before the run folder's checkpoint listing
(`pretrain/weights/checkpoint_folder.py`) and the check of a layout change
(`pretrain/weights/layout_change.py`) were split from the torch code that
saves, loads and converts. A rank imports torch and DeepSpeed anyway; the
launcher, which only reads files and starts torchrun, does not need to.
The next rows are a rank's imports: rank 0's, and another rank's, which
refuses the MLflow that DeepSpeed would import (`pretrain/cli/commands.py`,
`cmd_train`); compare them with each other. Then rank 0's imports exiting
as a rank now does, its objects frozen out of Python's last garbage
collection (`entry_point` in `pretrain/cli/__init__.py`); compare it with
rank 0's row. The last three rows are what a rank imports to build its
engine, then with DeepSpeed's Muon optimizer module imported as DeepSpeed's
optimizers import it (its kernels wrapped in `torch.compile`, which imports
TorchInductor's compiler) and as a rank imports it
(`import_deepspeeds_muon_compiling_on_first_call` in
`pretrain/train/engine.py`); compare them with each other.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

LAUNCHER = "import pretrain.jobs.submit, pretrain.train.preflight"
RANK_ENGINE = "import sys, torch._dynamo; sys.modules['mlflow'] = None; from pretrain.train import engine"
MUON = "deepspeed.runtime.zero.muon.muon_optimizer"
CASES = {
    "the launcher's imports (pretrain.jobs.submit, pretrain.train.preflight)": LAUNCHER,
    "baseline: the same, and torch": LAUNCHER + ", torch",
    "rank 0's (pretrain.train.loop)": "import pretrain.train.loop",
    "another rank's (the same, MLflow refused)": "import sys; sys.modules['mlflow'] = None; import pretrain.train.loop",
    "rank 0's, exiting frozen (gc.freeze)": "import gc, pretrain.train.loop; gc.freeze()",
    # What a rank imports to build its engine, the optimizer's torch._dynamo included, and then DeepSpeed's
    # Muon module (imported by every ZeRO and bf16 optimizer): as DeepSpeed imports it, and as a rank does.
    "a rank's engine imports": RANK_ENGINE,
    "the same, and Muon as DeepSpeed imports it": RANK_ENGINE + "; import " + MUON,
    "the same, and Muon as a rank imports it": RANK_ENGINE
    + "; engine.import_deepspeeds_muon_compiling_on_first_call()",
}


def measure(statement: str) -> tuple[float, float]:
    """Seconds and CPU seconds of a fresh interpreter running `statement`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    measure("import pretrain.train.loop")  # warm the page cache and the bytecode caches
    # Round after round of every case, so that the machine's drift in speed falls on all of them alike.
    rounds = [{name: measure(statement) for name, statement in CASES.items()} for _ in range(args.repeats)]
    medians = {name: [statistics.median(r[name][i] for r in rounds) for i in (0, 1)] for name in CASES}
    baseline = medians["baseline: the same, and torch"][0]
    print("| imports | seconds | CPU-s | x baseline |\n| --- | --- | --- | --- |")
    for name, (seconds, cpu) in medians.items():
        print(f"| {name} | {seconds:.2f} | {cpu:.2f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
