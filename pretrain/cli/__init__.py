"""`pretrain`: one command per stage, all driven by the same config.

    pretrain data build --config configs/demo.yaml
    pretrain data inspect --config configs/demo.yaml
    pretrain data verify --dir outputs/data/stdlib
    pretrain data cloze --config configs/demo.yaml      # a multiple-choice task from held-out text
    pretrain train      --config configs/demo.yaml optimizer.lr=3e-4
    pretrain export     --config configs/demo.yaml
    pretrain eval       --config configs/demo.yaml --task tasks/arc_easy.jsonl   # accuracy, validation loss
    pretrain generate   --config configs/demo.yaml --prompt "Return the" --prompt "def"
    pretrain attention  --checkpoint outputs/runs/first/export --text "I love it."   # heatmaps
    pretrain submit     --config configs/demo.yaml --detach                # or --target slurm|ray|multinode
    pretrain jobs list                                    # submitted jobs and their schedulers' state
    pretrain config     --config configs/demo.yaml optimizer.lr=3e-4   # the resolved config
    pretrain model info llama-1b --zero-stage 3 --world-size 8     # size, FLOPs, memory
    pretrain runs sync outputs/runs/first   # send a run's MLflow spool, kept while the server was down

Every subcommand takes `--config FILE` and dotted `key.path=value` overrides.

Owns parsing (parser.py) and dispatching (commands.py, a few lines per
command calling into the package that does the work). May import every
package of pretrain/; nothing imports it.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import sys

from data_pipeline.errors import DataError
from launch import signals
from launch.errors import LaunchError
from pretrain.cli.commands import COMMANDS, cmd_attention, cmd_jobs, cmd_model, cmd_runs, in_launched_rank
from pretrain.cli.parser import build_parser
from pretrain.errors import PretrainError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse options; overrides may stand anywhere after the subcommand, also between options."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    late_overrides = [arg for arg in extras if "=" in arg and not arg.startswith("-")]
    unknown = [arg for arg in extras if arg not in late_overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*getattr(args, "overrides", []), *late_overrides]
    if getattr(args, "nproc", None):
        args.overrides.append(f"launch.nproc_per_node={args.nproc}")
    if getattr(args, "init_from", None):
        args.overrides.append(f"train.init_from={args.init_from}")
    if getattr(args, "target", None):
        args.overrides.append(f"launch.target={args.target}")
    return args


def main(argv: list[str] | None = None) -> int:
    if not (sys.argv[1:] if argv is None else argv):  # `pretrain` alone: what it can do, not a usage error
        build_parser().print_help()
        return 0
    args = parse_args(argv)
    launching = args.command in ("train", "submit") and not in_launched_rank()
    if launching:
        # First, before the slow imports: a SIGTERM or Ctrl-C from now on stops the job cleanly.
        signals.watch()
    try:
        return run_command(args)
    except (PretrainError, DataError, LaunchError) as err:
        if not getattr(err, "every_rank", False) or os.environ.get("RANK", "0") == "0":
            print(f"pretrain {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pretrain {args.command}: interrupted", file=sys.stderr)
        return signals.INTERRUPTED
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"pretrain {args.command}: error: no space left on device{where}; free some space", file=sys.stderr)
        return 1
    finally:
        if launching:
            signals.unwatch()


def entry_point() -> None:
    """`pretrain` and `python -m pretrain.cli` (each rank): main(), then exit without the last garbage collection.

    At exit, Python collects garbage once more, walking every object the
    process still holds. A rank holds millions (torch, DeepSpeed and MLflow
    loaded): the walk takes over a second of CPU, a sixth of a short job's,
    for objects that die with the process anyway. Frozen (gc.freeze), they are
    left out of it. Nothing is lost: what matters was written and closed
    before main() returned, and exit handlers still run.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


def run_command(args: argparse.Namespace) -> int:
    from pretrain.config import load_config

    if args.command == "model":  # about a preset, not a job: no config
        return cmd_model(args)
    if args.command == "attention":  # about a trained model: no config either
        return cmd_attention(args)
    if args.command == "runs":  # about a run folder: its own config.yaml
        return cmd_runs(args)
    if args.command == "jobs":  # about recorded jobs
        return cmd_jobs(args)
    config = load_config(args.config, args.overrides)
    return COMMANDS[args.command](args, config)
