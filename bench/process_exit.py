"""What a short job saves by leaving its processes' objects out of Python's last garbage collection.

    .venv/bin/python bench/process_exit.py --data outputs/data/tiny               # 3 repeats of each
    .venv/bin/python bench/process_exit.py --data outputs/data/tiny --repeats 5

The tiny config (configs/tiny.yaml), 10 steps on 2 ranks, run as is and as a
baseline, alternately, in a temporary folder. As is, the launcher, torchrun
and each rank freeze their objects before exiting (`entry_point` in
pretrain/cli/__init__.py, launch/torchrun.py). The baseline unfreezes them in
an exit handler (a `sitecustomize` on PYTHONPATH, which every process of the
job inherits), so Python's last collection walks them all again, as before.
Each figure is the median: the wall time of the command, and the CPU time of
the whole machine from /proc/stat (run it on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNFREEZE_AT_EXIT = "import atexit, gc\natexit.register(gc.unfreeze)\n"


def busy_cpu_seconds() -> float:
    """CPU time the machine has spent on anything but idling, in seconds."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def tiny_job(data: Path, work: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, machine CPU seconds) of one tiny 2-rank job."""
    command = [
        *(sys.executable, "-m", "pretrain.cli", "train", "--config", str(ROOT / "configs" / "tiny.yaml")),
        *(
            f"data.output_dir={data}",
            f"checkpoint.root={work / 'runs'}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        ),
        *("train.max_steps=10", "lr_schedule.warmup_steps=2", "eval.interval=10"),
    ]
    cpu, started = busy_cpu_seconds(), time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - started, busy_cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a dataset built with configs/tiny.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "baseline").mkdir()
        (root / "baseline" / "sitecustomize.py").write_text(UNFREEZE_AT_EXIT)
        pythonpath = os.pathsep.join(filter(None, [str(root / "baseline"), os.environ.get("PYTHONPATH")]))
        cases = {"baseline: collected at exit": os.environ | {"PYTHONPATH": pythonpath}, "as is: frozen": os.environ}
        results = {name: [] for name in cases}
        for repeat in range(args.repeats):
            for name, env in cases.items():
                work = root / f"{name.partition(':')[0].replace(' ', '-')}-{repeat}"
                results[name].append(tiny_job(args.data.resolve(), work, env))
        base_cpu = statistics.median(r[1] for r in results["baseline: collected at exit"])
        print("| job | wall s | CPU s | x baseline CPU |\n| --- | --- | --- | --- |")
        for name, runs in results.items():
            wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            print(f"| {name} | {wall:.1f} | {cpu:.1f} | {cpu / base_cpu:.2f} |")


if __name__ == "__main__":
    main()
