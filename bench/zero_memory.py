"""Per-rank bytes of parameters, gradients and optimizer state under DeepSpeed ZeRO, measured, against the formula.

    .venv/bin/python bench/zero_memory.py                     # stages 0-3 at 1, 2 and 4 ranks, fp32 and bf16
    .venv/bin/python bench/zero_memory.py --ranks 2 --stages 3 --precisions bf16 --where
    .venv/bin/python bench/zero_memory.py model.n_layer=8     # model overrides (default: n_embd 256, 4 layers)

For each number of ranks, torchrun starts that many CPU processes (gloo).
Each builds, for every stage and precision in turn, the engine `pretrain
train` builds (`pretrain.train.engine.build_engine`: torch AdamW with parameter
groups, the generated DeepSpeed JSON) on configs/demo.yaml's model made
wider (4.24 M parameters), trains one step on random token ids (so Adam's
state exists), runs the next step's forward and backward, and then, between
backward and the optimizer step, walks the tensors the engine holds and adds
up their storages, each storage once (by data_ptr):

- parameters: the model's working weights on this rank: each parameter's
  storage (under ZeRO 1 and 2 the flat, padded buffer they are views of);
  under ZeRO 3 the partitions `param.ds_tensor`, plus the parameters that
  DeepSpeed keeps whole (below `stage3_param_persistence_threshold`);
- optimizer: the fp32 master weights the inner torch optimizer steps, when
  they are not the model's own storage, and its `state` (exp_avg,
  exp_avg_sq, step);
- gradients: `.grad` and `.grad_accum` of both, and the storages DeepSpeed
  reaches through attributes named for gradients (`averaged_gradients`,
  `grads_in_partition`, `grad_partitions_flat_buffer`);
- buffers: everything else reachable from DeepSpeed's optimizer (the ZeRO 3
  reduce bucket of `reduce_bucket_size` elements).

It also adds up everything the engine holds early in that backward (when the
final norm's weight has its gradient), which catches the ZeRO 1 and 2 reduce
bucket: allocated when backward begins and freed when it ends.

Each rank measures itself; rank 0 gathers the figures and the table shows
the rank that holds the most. The formula is `pretrain.train.cost.memory_per_rank`
(the ZeRO paper's: bf16 2+2+12 bytes per parameter, fp32 4+4+8; stage 1
divides the optimizer state by the ranks, stage 2 also the gradients, stage 3
also the weights). The master weights count as optimizer state, as in the
paper's K = 12; the fp32 formula has no master copy.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import subprocess
import tempfile
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from launch.local import NodeLayout, rank_environment, torchrun_command
from model import GPT
from pretrain.config import Config, load_config
from pretrain.train.cost import memory_per_rank
from pretrain.train.engine import build_engine, init_distributed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ["model.n_embd=256", "model.n_layer=4"]
CATEGORIES = ("parameters", "gradients", "optimizer", "buffers")
MIB = 2**20


class Storages:
    """Bytes per category, each storage counted once, with where each was found."""

    def __init__(self):
        self.owner: dict[int, str] = {}
        self.sources: dict[str, collections.Counter] = {name: collections.Counter() for name in CATEGORIES}

    def add(self, category: str, tensor, source: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0 or storage.data_ptr() in self.owner:
            return
        self.owner[storage.data_ptr()] = category
        self.sources[category][source] += storage.nbytes()

    def totals(self) -> dict[str, int]:
        return {name: sum(counter.values()) for name, counter in self.sources.items()}


def reachable_tensors(obj, name: str, seen: set[int], depth: int = 0):
    """(attribute name, tensor) for every tensor reachable from DeepSpeed's optimizer object."""
    if depth > 12 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield name, obj
        for attribute in ("grad", "grad_accum", "ds_tensor"):
            if isinstance(getattr(obj, attribute, None), torch.Tensor):
                yield f"{name}.{attribute}", getattr(obj, attribute)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            yield from reachable_tensors(item, name, seen, depth + 1)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from reachable_tensors(item, name, seen, depth + 1)
    elif is_walked(obj):
        for attribute, value in vars(obj).items():
            yield from reachable_tensors(value, attribute if depth == 0 else name, seen, depth + 1)


def is_walked(obj) -> bool:
    """An object of DeepSpeed or torch, not a module (the model's parameters are counted on their own)."""
    return (
        hasattr(obj, "__dict__")
        and not isinstance(obj, (type, torch.nn.Module))
        and type(obj).__module__.split(".")[0] in ("deepspeed", "torch")
    )


def measure(engine) -> dict:
    """Bytes this rank holds, by category, and the DeepSpeed attributes they were found in."""
    held = Storages()
    parameters = list(engine.module.parameters())
    for param in parameters:
        if hasattr(param, "ds_tensor"):
            held.add("parameters", param.ds_tensor, "param.ds_tensor (ZeRO-3 partition)")
            held.add("parameters", param, "whole parameters kept by ZeRO-3 (persistent)")
        else:
            held.add("parameters", param, "model parameters")
    # The torch AdamW: its state is keyed by the tensors it steps, DeepSpeed's master weights (ZeRO 3 puts
    # them in its param_groups only during the step).
    inner = engine.basic_optimizer
    masters = list(inner.state) + [p for group in inner.param_groups for p in group["params"]]
    for param in masters:
        held.add("optimizer", param, "master weights (inner optimizer's params)")
    for state in inner.state.values():
        for key, value in state.items():
            held.add("optimizer", value, f"optimizer.state[{key}]")
    for param in parameters + masters:
        held.add("gradients", param.grad, ".grad")
        held.add("gradients", getattr(param, "grad_accum", None), ".grad_accum")
    # A storage reached both through a gradient attribute and another one is a gradient.
    found = sorted(reachable_tensors(engine.optimizer, "optimizer", set()), key=lambda item: "grad" not in item[0])
    for name, tensor in found:
        held.add("gradients" if "grad" in name else "buffers", tensor, name)
    return {"bytes": held.totals(), "sources": {k: dict(v) for k, v in held.sources.items()}}


def job_config(args: argparse.Namespace, stage: int, precision: str, ranks: int) -> Config:
    micro = 2
    return load_config(
        args.config,
        [
            *args.overrides,
            f"parallel.zero_stage={stage}",
            f"train.precision={precision}",
            f"launch.nproc_per_node={ranks}",
            f"train.micro_batch_size={micro}",
            f"train.global_batch_size={micro * ranks}",
            "train.seq_len=64",
            "lr_schedule.warmup_steps=1",
        ],
    )


def forward_backward(engine, ids: torch.Tensor, during_backward: dict | None = None) -> None:
    """One micro-batch; with `during_backward`, measure all the engine holds once backward has begun."""
    hook = None
    if during_backward is not None:
        # The final norm's weight gets one of the first gradients; this hook runs after DeepSpeed's
        # own hook on it, which sets up the reduce buckets.
        hook = engine.module.norm.weight.register_post_accumulate_grad_hook(
            lambda param: during_backward.update(all=sum(measure(engine)["bytes"].values()))
        )
    _, loss = engine(ids[:, :-1], ids[:, 1:])
    engine.backward(loss)
    if hook is not None:
        hook.remove()


def measure_one(args: argparse.Namespace, stage: int, precision: str) -> dict:
    """Build the engine, train a step, measure during and after the next backward; every rank's figures."""
    config = job_config(args, stage, precision, dist.get_world_size())
    torch.manual_seed(config.train.seed)
    model = GPT(config.model)
    parameters = sum(p.numel() for p in model.parameters())
    engine = build_engine(config, model)
    ids = torch.randint(0, config.model.vocab_size, (config.train.micro_batch_size, config.train.seq_len + 1))
    forward_backward(engine, ids)
    engine.step()
    during_backward = {}
    forward_backward(engine, ids, during_backward)
    held = measure(engine) | {"during_backward": during_backward["all"]}
    engine.step()
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, held)
    engine.destroy()
    gc.collect()
    return {"stage": stage, "precision": precision, "parameters": parameters, "ranks": per_rank}


def worker(args: argparse.Namespace) -> None:
    init_distributed()
    results = [measure_one(args, stage, precision) for precision in args.precisions for stage in args.stages]
    if dist.get_rank() == 0:
        Path(args.results).write_text(json.dumps(results))
    dist.destroy_process_group()


def run_ranks(args: argparse.Namespace, ranks: int, results: Path) -> list[dict]:
    """Start `ranks` worker processes with torchrun; return what rank 0 gathered, one entry per stage and precision."""
    worker_args = ["--worker", *args.overrides, "--results", str(results), "--config", args.config, "--stages"]
    worker_args += [str(s) for s in args.stages] + ["--precisions", *args.precisions]
    command = torchrun_command(NodeLayout(ranks), "bench.zero_memory", worker_args)
    subprocess.run(command, cwd=ROOT, env=rank_environment(ranks), check=True, stdout=subprocess.DEVNULL)
    return [result | {"world": ranks} for result in json.loads(results.read_text())]


def model_states(figures: dict) -> int:
    return sum(figures["bytes"][category] for category in CATEGORIES[:3])


def table_row(result: dict) -> list[str]:
    """Stage, ranks, then measured / formula per category for the rank that holds the most, and the ratios."""
    largest = max(result["ranks"], key=model_states)
    measured = [largest["bytes"][category] for category in CATEGORIES[:3]]
    formula = memory_per_rank(result["parameters"], result["precision"], result["stage"], result["world"])
    expected = [formula["weights"], formula["gradients"], formula["optimizer"]]
    cells = [f"{m / MIB:.2f} / {e / MIB:.2f} ({m / e:.2f})" for m, e in zip(measured, expected)]
    return [
        str(result["stage"]),
        str(result["world"]),
        *cells,
        f"{sum(measured) / MIB:.2f}",
        f"{sum(expected) / MIB:.2f}",
        f"**{sum(measured) / sum(expected):.2f}**",
        f"{min(map(model_states, result['ranks'])) / MIB:.2f}",
        f"{largest['bytes']['buffers'] / MIB:.1f}",
        f"{largest['during_backward'] / MIB:.1f}",
    ]


def where_lines(result: dict) -> list[str]:
    """Where the bytes of the rank that holds the most were found."""
    largest = max(result["ranks"], key=model_states)
    return [
        f"  stage {result['stage']}, {result['world']} rank(s), {category}: "
        + "; ".join(f"{source} {size / MIB:.2f}" for source, size in largest["sources"][category].items())
        for category in CATEGORIES
        if largest["sources"][category]
    ]


HEADER = [
    "stage",
    "ranks",
    "parameters",
    "gradients",
    "optimizer (master + Adam)",
    "total measured",
    "total formula",
    "ratio",
    "smallest rank's total",
    "buffers after backward",
    "all held early in backward",
]


def print_tables(results: list[dict], show_where: bool) -> None:
    print(f"model: {results[0]['parameters']:,} parameters; MiB per rank, for the rank that holds the most;")
    print("parameters, gradients, optimizer: measured / formula (measured / formula)")
    for precision in dict.fromkeys(result["precision"] for result in results):
        rows = sorted((r for r in results if r["precision"] == precision), key=lambda r: (r["stage"], r["world"]))
        print(f"\n{precision}\n\n| " + " | ".join(HEADER) + " |\n|" + " --- |" * len(HEADER))
        for result in rows:
            print("| " + " | ".join(table_row(result)) + " |")
        if show_where:
            print("\nwhere the bytes were found (MiB):")
            print("\n".join(line for result in rows for line in where_lines(result)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("overrides", nargs="*", help=f"config overrides (default: {' '.join(DEFAULT_MODEL)})")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4], help="data-parallel ranks (CPU processes)")
    parser.add_argument("--stages", type=int, nargs="+", choices=[0, 1, 2, 3], default=[0, 1, 2, 3])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--where", action="store_true", help="also print the DeepSpeed attributes holding the bytes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.overrides = args.overrides or DEFAULT_MODEL
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        results = [result for ranks in args.ranks for result in run_ranks(args, ranks, Path(folder) / f"{ranks}.json")]
    print(f"torch {torch.__version__}, DeepSpeed {deepspeed.__version__}, CPU (gloo)")
    print_tables(results, args.where)


if __name__ == "__main__":
    main()
