"""Peak memory and time of the head's loss, forward and backward: the whole logits against chunks of tokens.

    python3 bench/loss_memory.py                                  # GPT-2's padded vocabulary, 4 x 1024 tokens
    python3 bench/loss_memory.py --tokens 16384 --chunks 0 4096 --device cuda

Each variant runs in a process of its own (so one's peak cannot hide
another's) and measures, for one call of the head with targets and its
backward: the peak memory above what the inputs already hold (on CPU the
process's peak resident set, `ru_maxrss`, against the one before the call;
on a GPU the allocator's peak) and the median time of `--repeats` calls.
Chunk size 0 is the baseline: the head's logits for all tokens, then
F.cross_entropy, as nanoGPT computes the loss. The hidden states and the
weight are random, fp32 on CPU and bf16 on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from model.loss import LMHead


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(args: argparse.Namespace, chunk_tokens: int) -> dict:
    """One variant, in this process."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    head = LMHead(args.n_embd, args.vocab).to(device, dtype)
    hidden = torch.randn(args.tokens, args.n_embd, device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.tokens,), device=device)

    def step() -> None:
        hidden.grad = head.weight.grad = None
        if chunk_tokens:
            loss = head(hidden, targets, chunk_tokens)
        else:
            loss = torch.nn.functional.cross_entropy(head(hidden).float(), targets)
        loss.backward()

    # The gradients' own memory is the same for both: allocate it before the baseline.
    hidden.grad, head.weight.grad = torch.zeros_like(hidden), torch.zeros_like(head.weight)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**30
    else:
        before = rss_gib()
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else rss_gib()
    return {"chunk_tokens": chunk_tokens, "peak_above_inputs_gib": peak - before, "seconds": statistics.median(times)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of the micro-batch (batch x sequence)")
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 4096, 1024], help="0: the whole logits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: measure this chunk size
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.one is not None:
        print(json.dumps(measure(args, args.one)))
        return
    print(f"{args.tokens} tokens, n_embd {args.n_embd}, vocabulary {args.vocab:,}, {args.device}")
    results = []
    for chunk in args.chunks:
        child = [sys.executable, __file__, *sys.argv[1:], "--one", str(chunk)]
        results.append(json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout))
    baseline = next((r for r in results if r["chunk_tokens"] == 0), results[0])
    for result in results:
        name = f"chunks of {result['chunk_tokens']}" if result["chunk_tokens"] else "whole logits"
        print(
            f"  {name:>16}: peak +{result['peak_above_inputs_gib']:.2f} GiB "
            f"({result['peak_above_inputs_gib'] / baseline['peak_above_inputs_gib']:.2f} x whole), "
            f"{result['seconds']:.2f} s ({result['seconds'] / baseline['seconds']:.2f} x whole)"
        )


if __name__ == "__main__":
    main()
