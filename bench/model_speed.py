"""Forward+backward speed of our GPT against Hugging Face transformers' implementation of the same model.

    python bench/model_speed.py --device cpu  --presets gpt2-small llama-160m --seq-len 512 --batch 2
    python bench/model_speed.py --device cuda --presets gpt2-medium llama-1b --seq-len 2048 --batch 8

Both sides get the same architecture and size (transformers' model is built
from `pretrain.weights.hf_config.hf_config_dict`, its default SDPA attention), the same
dtype (fp32 on CPU, bf16 on CUDA, weights cast as a whole), the same token ids
and the same loss (cross-entropy over all positions, in fp32), so the timing
compares the networks alone. Rounds alternate the two, and the order within a
round, so that a noisy machine slows both alike; the figure is the median
round. On CUDA the MFU of each is reported against the chip's dense bf16 peak
(pretrain.train.cost), and the peak memory of a step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from model import GPT, GPTConfig
from pretrain.tools.model_info import load_preset
from pretrain.train.cost import mfu, model_cost
from pretrain.weights.hf_config import hf_config_dict


def build_models(
    config: GPTConfig, device: str, dtype: torch.dtype, compile_models: bool
) -> dict[str, torch.nn.Module]:
    hf_kwargs = hf_config_dict(config)
    hf_config = transformers.AutoConfig.for_model(hf_kwargs.pop("model_type"), **hf_kwargs)
    with torch.device(device):  # initialize on the device: a 1B model's CPU init takes minutes
        ours = GPT(config)
        theirs = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    models = {"pretrain": ours.to(dtype).train(), "transformers": theirs.to(dtype).train()}
    return {name: torch.compile(model) for name, model in models.items()} if compile_models else models


def logits_of(name: str, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)[0] if name == "pretrain" else model(input_ids=ids).logits


def time_steps(name: str, model: torch.nn.Module, ids: torch.Tensor, steps: int) -> float:
    """Seconds per forward+backward step."""
    synchronize = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        logits = logits_of(name, model, ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
    synchronize()
    return (time.perf_counter() - started) / steps


def bench_preset(preset: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = load_preset(preset)
    config.max_seq_len = max(config.max_seq_len, args.seq_len)  # gpt2 presets stop at 1024 positions
    models = build_models(config, args.device, dtype, args.compile)
    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq_len + 1), device=args.device)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    memory = {}
    for name, model in models.items():
        time_steps(name, model, ids, args.warmup)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            time_steps(name, model, ids, 1)
            memory[name] = torch.cuda.max_memory_allocated() / 2**30
    for round_ in range(args.rounds):
        order = list(models) if round_ % 2 == 0 else list(reversed(models))
        for name in order:
            seconds[name].append(time_steps(name, models[name], ids, args.steps))
    tokens = args.batch * args.seq_len
    flops = model_cost(config, args.seq_len).flops_per_token
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results = {}
    for name, times in seconds.items():
        tokens_per_s = tokens / statistics.median(times)
        results[name] = {"tokens_per_s": tokens_per_s, "mfu": mfu(tokens_per_s, flops, device_name)}
        results[name]["peak_memory_gib"] = memory.get(name)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["gpt2-small", "llama-160m"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (same for both sides)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"batch {args.batch} x sequence {args.seq_len}, {args.rounds} rounds of {args.steps} steps, median round")
    for preset in args.presets:
        results = bench_preset(preset, args)
        ours, theirs = results["pretrain"], results["transformers"]
        line = (
            f"{preset}: pretrain {ours['tokens_per_s']:,.0f} tok/s, transformers {theirs['tokens_per_s']:,.0f} tok/s, "
            f"ratio {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}"
        )
        if ours["mfu"] is not None:
            line += f"; MFU pretrain {ours['mfu']:.1%}, transformers {theirs['mfu']:.1%}"
        if ours["peak_memory_gib"] is not None:
            line += f"; peak memory {ours['peak_memory_gib']:.1f} vs {theirs['peak_memory_gib']:.1f} GiB"
        print(line, flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
