"""Peak memory per rank against sequence length, with sequences split across 1, 2 and 4 ranks (Ulysses).

    .venv/bin/python bench/sequence_memory.py                          # lengths 1024 to 8192, sizes 1, 2 and 4
    .venv/bin/python bench/sequence_memory.py --lengths 2048 4096 --sizes 1 2
    .venv/bin/python bench/sequence_memory.py model.n_layer=8          # model overrides

For each sequence-parallel size P and sequence length L, torchrun starts P
CPU processes (gloo), each with one core; each builds the engine `pretrain
train` builds (ZeRO 1, fp32, `parallel.sequence_parallel_size=P`) for the
bench's model (4 layers, 256 wide, 8 heads, RoPE, GELU: 4.2 M parameters),
trains one step on a sequence of 64 tokens so that the gradients and Adam's
state exist, and then runs one forward and backward pass of one sequence of
L tokens. Two figures: the bytes autograd saved for backward in that pass
(each storage once, the weights left out), and the rank's peak resident set
during it above its resident set just before it: what the pass adds to the
weights, gradients and optimizer state the rank already holds, that is its
activations and the backward pass's working memory. Each (P, L) runs in
processes of its own, since the peak resident set only rises.

Beside each, in parentheses, `pretrain.train.cost.activation_bytes` for the
rank's L / P tokens (docs/parallelism.md, "Sequence parallelism"), for the
rank with the highest peak; then the peak's ratio to the formula and to one
rank's peak at the same length.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from launch.local import NodeLayout, rank_environment, torchrun_command
from model import GPT
from pretrain.config import Config, load_config
from pretrain.train.cost import activation_bytes
from pretrain.train.engine import build_engine, init_distributed

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
MODEL = ["model.n_layer=4", "model.n_embd=256", "model.n_head=8", "model.pos_encoding=rope", "model.vocab_size=4096"]
WARM_UP_TOKENS = 64


def job_config(args: argparse.Namespace, size: int, length: int) -> Config:
    return load_config(
        ROOT / "configs" / "demo.yaml",
        [
            *MODEL,
            *args.overrides,
            f"model.max_seq_len={length}",
            f"train.seq_len={length}",
            "train.micro_batch_size=1",
            "train.global_batch_size=1",
            "train.precision=fp32",
            "parallel.zero_stage=1",
            f"parallel.sequence_parallel_size={size}",
            f"launch.nproc_per_node={size}",
        ],
    )


def resident_bytes() -> int:
    """This process's resident set now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def step(engine, length: int, vocab_size: int) -> int:
    """Forward and backward of one sequence of `length` tokens (the same on every rank of the group); the bytes
    autograd saved for backward, each storage once, the weights left out."""
    ids = torch.randint(0, vocab_size, (1, length + 1), generator=torch.Generator().manual_seed(0))
    weights = {param.untyped_storage().data_ptr() for param in engine.module.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, loss = engine(ids[:, :-1], ids[:, 1:])
    engine.backward(loss)
    return sum(saved.values())


def worker(args: argparse.Namespace) -> None:
    init_distributed()
    size, (length,) = dist.get_world_size(), args.lengths
    config = job_config(args, size, length)
    torch.manual_seed(config.train.seed)
    engine = build_engine(config, GPT(config.model))
    step(engine, WARM_UP_TOKENS * size, config.model.vocab_size)
    engine.step()
    before = resident_bytes()
    saved = step(engine, length, config.model.vocab_size)
    added = peak_resident_bytes() - before
    per_rank = [None] * size
    dist.all_gather_object(per_rank, (added, saved))
    if dist.get_rank() == 0:
        tokens = length // size
        formula = activation_bytes(config.model, tokens, 4, config.train.loss_chunk_tokens, size)
        Path(args.results).write_text(json.dumps({"ranks": per_rank, "formula": formula}))
    dist.barrier()  # leave together, as pretrain train's ranks do
    dist.destroy_process_group()


def run(args: argparse.Namespace, size: int, length: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results.json"
        worker_args = ["--worker", "--results", str(results), "--lengths", str(length), *args.overrides]
        command = torchrun_command(NodeLayout(size), "bench.sequence_memory", worker_args)
        # glibc's allocator returns every block of 64 KiB or more to the system when freed (by default it
        # keeps more and more of them), so the resident set follows the memory in use.
        environment = rank_environment(size) | {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
        subprocess.run(command, cwd=ROOT, env=environment, check=True, stdout=subprocess.DEVNULL)
        return json.loads(results.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("overrides", nargs="*", help="model overrides, key=value")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        "| sequence | sequence-parallel ranks | tokens per rank | saved for backward, MiB (formula) "
        "| peak above the held state, MiB (formula) | peak / formula | peak / one rank's |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for length in args.lengths:
        alone = None
        for size in args.sizes:
            result = run(args, size, length)
            peak, saved = max(result["ranks"])  # the rank with the highest peak
            formula = result["formula"]
            alone = peak if size == 1 else alone
            cells = [length, size, length // size, f"{saved / MIB:.1f} ({formula['saved'] / MIB:.1f})"]
            cells += [f"{peak / MIB:.1f} ({formula['peak'] / MIB:.1f})", f"{peak / formula['peak']:.2f}"]
            cells.append(f"{peak / alone:.2f}" if alone else "")
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
