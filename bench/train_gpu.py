"""Training throughput on one GPU: the engine `pretrain train` builds, in bf16 and in FP8, then a plain
nanoGPT-style loop, in one process.

    python3 bench/train_gpu.py --preset gpt2-small --seq-len 1024 --micro-batch 16
    python3 bench/train_gpu.py --preset llama-1b --seq-len 2048 --micro-batch 8
    python3 bench/train_gpu.py --preset llama-1b --seq-len 2048 --micro-batch 8 --precision bf16-autocast --zero-stage 0

**Ours**: `pretrain.train.engine.build_engine` with the DeepSpeed JSON generated
from the config (`--precision`, `--zero-stage`, PyTorch's fused AdamW:
without ZeRO and with fp32 weights, ours, which clips and skips on the
device), the loss in chunks of `--loss-chunk-tokens` tokens (model/loss.py),
then `engine.compile()`, exactly as a training run would have it.
**Ours, FP8**: the same with `train.float8` (torchao's float8 with
`--float8-recipe` scaling, on the layers large enough to gain).
**Plain loop**: what nanoGPT's train.py does with the same model and batch:
fp32 weights, bf16 autocast, `torch.compile(model)`, the whole logits
tensor and F.cross_entropy, AdamW with the same parameter groups and
`fused=True`, gradient clipping, `zero_grad(set_to_none)`.

For each: tokens/s and MFU (PaLM's FLOP count, `pretrain.train.cost`,
against the chip's dense bf16 peak), the median of `--rounds` rounds of
`--steps` steps after `--warmup` steps (compilation); the peak memory; and a
step-time breakdown (forward, backward, optimizer) from CUDA events in
`--breakdown-steps` extra steps. The presets' vocabularies are padded to a
multiple of 128 (GPT-2's 50,257 -> 50,304, as nanoGPT does), and the
attention kernel that SDPA picks is read from a profile of one forward
pass, and the places where one step makes the host wait for the GPU from
torch's sync debug mode. The batches are random token ids, on the GPU.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from train_speed import single_process_environment  # bench/, the script's folder, is on sys.path

from model import GPT
from pretrain.config import Config, load_config
from pretrain.train.cost import mfu, model_cost
from pretrain.train.engine import build_engine, init_distributed
from pretrain.train.optim import param_groups

ATTENTION_WORDS = ("flash", "fmha", "scaled_dot_product", "attention")


def job_config(args: argparse.Namespace, float8: bool = False) -> Config:
    preset = load_config(None, [f"model.preset={args.preset}"]).model
    return load_config(
        None,
        [
            f"model.preset={args.preset}",
            f"model.max_seq_len={max(args.seq_len, preset.max_seq_len)}",
            "model.dropout=0",
            f"train.precision={args.precision}",
            f"parallel.zero_stage={args.zero_stage}",
            f"train.loss_chunk_tokens={args.loss_chunk_tokens}",
            "launch.nproc_per_node=1",
            f"train.seq_len={args.seq_len}",
            f"train.micro_batch_size={args.micro_batch}",
            f"train.global_batch_size={args.micro_batch}",
            "lr_schedule.warmup_steps=1",
            f"train.float8.enabled={float8}",
            f"train.float8.recipe={args.float8_recipe}",
        ],
    )


class Engine:
    """Ours: forward, backward and step through DeepSpeed."""

    name = "pretrain, bf16"

    def __init__(self, config: Config, model: GPT):
        self.engine = build_engine(config, model)
        self.engine.compile()

    def forward(self, inputs, targets):
        return self.engine(inputs, targets)[1]

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self):
        self.engine.step()


class Float8Engine(Engine):
    """Ours with train.float8: the chosen Linear layers multiply in FP8."""

    name = "pretrain, fp8"


class PlainLoop:
    """nanoGPT's loop: fp32 weights under bf16 autocast, torch.compile, fused AdamW."""

    name = "plain PyTorch (nanoGPT-style)"

    def __init__(self, config: Config, model: GPT):
        settings = config.optimizer
        self.model, self.grad_clip = model, settings.grad_clip
        self.compiled = torch.compile(model)
        self.optimizer = torch.optim.AdamW(
            param_groups(model, settings.weight_decay),
            lr=settings.lr,
            betas=(settings.beta1, settings.beta2),
            fused=True,
        )

    def forward(self, inputs, targets):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.compiled(inputs, targets)[1]

    def backward(self, loss):
        loss.backward()

    def step(self):
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


LOOPS = {"ours": Engine, "ours-fp8": Float8Engine, "plain": PlainLoop}


def train_steps(loop, batch, steps: int) -> None:
    for _ in range(steps):
        loop.backward(loop.forward(*batch))
        loop.step()


def seconds_per_step(loop, batch, steps: int) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    train_steps(loop, batch, steps)
    torch.cuda.synchronize()  # the only synchronization: none inside the steps
    return (time.perf_counter() - started) / steps


def breakdown_ms(loop, batch, steps: int) -> dict[str, float]:
    """Median milliseconds of forward, backward and optimizer step, from CUDA events (no host waits inside)."""
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(steps):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        events[0].record()
        loss = loop.forward(*batch)
        events[1].record()
        loop.backward(loss)
        events[2].record()
        loop.step()
        events[3].record()
        torch.cuda.synchronize()
        for name, start, end in zip(phases, events, events[1:], strict=False):
            phases[name].append(start.elapsed_time(end))
    return {name: statistics.median(times) for name, times in phases.items()}


def attention_kernel(loop, batch) -> str:
    """Which attention kernels the forward pass runs: the profiler's names that say flash, fmha or attention."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        loop.forward(*batch)
        torch.cuda.synchronize()
    names = {event.key for event in profile.key_averages()}
    used = sorted(name[:60] for name in names if any(word in name.lower() for word in ATTENTION_WORDS))
    return "; ".join(used) or "none found"


def host_waits(loop, batch) -> str:
    """Where one step makes the host wait for the GPU: torch's sync debug mode warns at each such call."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_steps(loop, batch, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    places = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return ", ".join(f"{place} x{count}" for place, count in sorted(places.items())) or "none"


def measure(loop, batch, config: Config, args: argparse.Namespace) -> dict:
    train_steps(loop, batch, args.warmup)  # compilation, allocator warm-up
    torch.cuda.reset_peak_memory_stats()
    rounds = [seconds_per_step(loop, batch, args.steps) for _ in range(args.rounds)]
    tokens_per_s = config.train.micro_batch_size * config.train.seq_len / statistics.median(rounds)
    flops = model_cost(config.model, config.train.seq_len).flops_per_token
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, flops, torch.cuda.get_device_name()),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "breakdown_ms": breakdown_ms(loop, batch, args.breakdown_steps),
        "attention": attention_kernel(loop, batch),
        "host_waits": host_waits(loop, batch),
    }


def report(name: str, result: dict) -> str:
    """The loop's details: the step's breakdown, the attention kernel and where the host waits."""
    parts = [", ".join(f"{phase} {ms:.1f} ms" for phase, ms in result["breakdown_ms"].items())]
    parts.append(f"attention: {result['attention']}")
    parts.append(f"host waits per step: {result['host_waits']}")
    return f"  {name}: " + " | ".join(parts)


def table_row(name: str, args: argparse.Namespace, result: dict, baseline: dict | None) -> str:
    """A row of docs/benchmarks.md's table: loop, preset, sequence, batch, tokens/s, MFU, peak memory, ratio."""
    mfu_text = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
    ratio = f"{result['tokens_per_s'] / baseline['tokens_per_s']:.3f}" if baseline else "1.000"
    cells = [name, args.preset, args.seq_len, args.micro_batch, f"{result['tokens_per_s']:,.0f}", mfu_text]
    return "| " + " | ".join(str(cell) for cell in [*cells, f"{result['peak_gib']:.1f} GiB", ratio]) + " |"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--zero-stage", type=int, default=1, choices=[0, 1, 2, 3])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "bf16-autocast"], help="ours: train.precision")
    parser.add_argument(
        "--loss-chunk-tokens", type=int, default=4096, help="ours: train.loss_chunk_tokens (0: all logits at once)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--breakdown-steps", type=int, default=5)
    parser.add_argument("--float8-recipe", default="tensorwise", choices=["tensorwise", "rowwise"])
    parser.add_argument("--only", choices=list(LOOPS), action="append", help="measure these loops only (repeatable)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    single_process_environment()
    init_distributed()
    config = job_config(args)
    ids = torch.randint(0, config.model.vocab_size, (args.micro_batch, args.seq_len + 1), device="cuda")
    batch = (ids[:, :-1], ids[:, 1:])
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(
        f"{args.preset}: vocabulary {config.model.vocab_size:,}, batch {args.micro_batch} x {args.seq_len}, "
        f"ours: {args.precision}, ZeRO {args.zero_stage}, loss chunks of {args.loss_chunk_tokens} tokens, "
        f"fp8 {args.float8_recipe}; plain: bf16 autocast, all logits at once"
    )
    results = {}
    for key, loop_class in LOOPS.items():
        if args.only and key not in args.only:
            continue
        config = job_config(args, float8=loop_class is Float8Engine)
        torch.manual_seed(config.train.seed)
        with torch.device("cuda"):  # a 1B model's initialization on the host takes minutes
            model = GPT(config.model)
        loop = loop_class(config, model)
        results[key] = measure(loop, batch, config, args)
        print(report(loop_class.name, results[key]), flush=True)
        del loop, model
        gc.collect()
        torch.cuda.empty_cache()
    print("| loop | preset | sequence | batch | tokens/s | MFU | peak memory | / plain loop |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, result in results.items():
        print(table_row(LOOPS[key].name, args, result, results.get("plain")))


if __name__ == "__main__":
    main()
