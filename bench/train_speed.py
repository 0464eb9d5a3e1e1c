"""Training-step speed of the DeepSpeed engine `pretrain train` builds, and its overhead over plain PyTorch.

    python bench/train_speed.py --config configs/demo.yaml            # CPU, fp32, 1 process, ZeRO 0: overhead
    python bench/train_speed.py --preset gpt2-small --device cuda --precision bf16 --zero-stage 1 --seq-len 1024 \\
        --micro-batch 16 --no-baseline [--compile]                    # GPU: tokens/s and MFU

The engine comes from `pretrain.train.engine.build_engine` with the DeepSpeed JSON
generated from the config, exactly as in training; a step is its forward,
backward and step per micro-batch. The baseline is the same model (same
initial weights) in a plain PyTorch loop: the same AdamW parameter groups, LR
schedule and gradient clipping, on the same token ids. Rounds alternate the
two; each figure is the median round. The batches are random token ids: the
data loader is benchmarked on its own (bench/reader.py).
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import time

import torch

from model import GPT
from pretrain.config import Config, load_config
from pretrain.train.cost import mfu, model_cost
from pretrain.train.engine import build_engine, init_distributed
from pretrain.train.optim import lr_multiplier, param_groups


def single_process_environment() -> None:
    """The variables torchrun would set, for a one-process run started as a plain script."""
    if "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")


class PlainLoop:
    """The training step without DeepSpeed: what the engine's overhead is measured against."""

    def __init__(self, config: Config, model: GPT):
        self.model, self.grad_clip = model, config.optimizer.grad_clip
        self.optimizer = torch.optim.AdamW(
            param_groups(model, config.optimizer.weight_decay),
            lr=config.optimizer.lr,
            betas=(config.optimizer.beta1, config.optimizer.beta2),
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(config))

    def step(self, micro_batches) -> None:
        for inputs, targets in micro_batches:
            _, loss = self.model(inputs, targets)
            (loss / len(micro_batches)).backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)


def engine_step(engine, micro_batches) -> torch.Tensor:
    """Forward, backward and step per micro-batch; the last loss, left on the device."""
    for inputs, targets in micro_batches:
        _, loss = engine(inputs, targets)
        engine.backward(loss)
        engine.step()  # the optimizer steps at the accumulation boundary only
    return loss.detach()


def timed(step, micro_batches, steps: int, device: str) -> float:
    """Seconds per optimizer step."""
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(micro_batches)
    synchronize()
    return (time.perf_counter() - started) / steps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--preset", help="a model preset (configs/model/) instead of the config's model")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--seq-len", type=int, help="default: the config's train.seq_len")
    parser.add_argument("--micro-batch", type=int, help="default: the config's train.micro_batch_size")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="engine.compile() (torch.compile under DeepSpeed)")
    parser.add_argument("--no-baseline", action="store_true", help="time the engine alone")
    return parser.parse_args()


def job_config(args: argparse.Namespace) -> Config:
    overrides = [
        f"parallel.zero_stage={args.zero_stage}",
        f"train.precision={args.precision}",
        "launch.nproc_per_node=1",
        "lr_schedule.warmup_steps=1",
    ]
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    base = load_config(args.config, overrides)
    seq_len = args.seq_len or base.train.seq_len
    micro = args.micro_batch or base.train.micro_batch_size
    overrides += [f"train.seq_len={seq_len}", f"train.micro_batch_size={micro}", f"train.global_batch_size={micro}"]
    overrides.append(f"model.max_seq_len={max(seq_len, base.model.max_seq_len)}")
    return load_config(args.config, overrides)


def main() -> None:
    args = parse_args()
    single_process_environment()
    init_distributed()
    config = job_config(args)
    torch.manual_seed(config.train.seed)
    with torch.device(args.device):  # a 1B model's initialization on the host takes minutes
        model = GPT(config.model)
    baseline = None if args.no_baseline else PlainLoop(config, copy.deepcopy(model))
    engine = build_engine(config, model)
    if args.compile:
        engine.compile()
    train = config.train
    ids = torch.randint(0, config.model.vocab_size, (train.micro_batch_size, train.seq_len + 1), device=args.device)
    micro_batches = [(ids[:, :-1], ids[:, 1:])]
    steps = {"engine": lambda batches: engine_step(engine, batches)}
    if baseline:
        steps["plain PyTorch"] = baseline.step
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        timed(step, micro_batches, args.warmup, args.device)
    for round_ in range(args.rounds):
        for name in list(steps) if round_ % 2 == 0 else list(reversed(steps)):
            seconds[name].append(timed(steps[name], micro_batches, args.steps, args.device))

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    tokens = train.micro_batch_size * train.seq_len
    flops = model_cost(config.model, train.seq_len).flops_per_token
    print(f"device: {device}; torch {torch.__version__}")
    print(
        f"model {args.preset or args.config}: {model.num_parameters():,} parameters; {args.precision}, "
        f"ZeRO {args.zero_stage}, batch {train.micro_batch_size} x {train.seq_len}"
        + (", engine.compile()" if args.compile else "")
    )
    rates = {name: tokens / statistics.median(times) for name, times in seconds.items()}
    for name, rate in rates.items():
        utilization = mfu(rate, flops, device)
        print(f"  {name}: {rate:,.0f} tokens/s" + (f", MFU {utilization:.1%}" if utilization is not None else ""))
    if baseline:
        print(f"  engine / plain PyTorch: {rates['engine'] / rates['plain PyTorch']:.3f}")
    if args.device == "cuda":
        print(f"  peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
