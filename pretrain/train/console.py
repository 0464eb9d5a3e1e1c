"""What rank 0 prints: a line every log interval, and a progress bar between them on a terminal.

The bar is tqdm's, redrawn in place, so it is only drawn when stdout is a
terminal; a log file, a pipe or CI gets the lines alone. A line printed
while the bar is up goes above it (tqdm.write), and the bar is drawn again
below.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from pretrain.train.metrics import format_duration


class Console:
    def __init__(self, max_steps: int, stream=None):
        self.stream = stream or sys.stdout
        self.max_steps = max_steps
        self.interactive = self.stream.isatty()
        self._bar: tqdm | None = None

    def line(self, text: str) -> None:
        if self._bar is None:
            print(text, file=self.stream, flush=True)
        else:
            self._bar.write(text, file=self.stream)

    def report(self, step: int, metrics: dict) -> None:
        """The line of a log interval: the step, its training metrics, and validation when there was one."""
        parts = [f"step {step:>6}/{self.max_steps}"]
        if "loss" in metrics:
            parts += [f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.2e}", f"{metrics['tokens_per_s']:,.0f} tok/s"]
            parts.append(f"{metrics['step_time_s'] * 1000:,.0f} ms/step")
            if "mfu" in metrics:
                parts.append(f"MFU {metrics['mfu']:.1%}")
            parts.append(f"mem {metrics['memory_peak_gb']:.2f} GiB")
            parts.append(f"elapsed {format_duration(metrics['elapsed_s'])}")
            parts.append(f"ETA {format_duration(metrics['eta_s'])}")
            if metrics["skipped_steps"]:
                parts.append(f"skipped {metrics['skipped_steps']}")
        if "val_loss" in metrics:
            parts.append(
                f"val_loss {metrics['val_loss']:.4f} (ppl {metrics['val_perplexity']:.1f}; "
                f"{metrics['val_sequences']:,} sequences, {metrics['val_tokens']:,} tokens)"
            )
        parts += [
            f"{key.removeprefix('eval/')} {value:.3f}"
            for key, value in metrics.items()
            if key.startswith("eval/") and key.endswith(("/loss", "/acc", "/acc_norm"))
        ]
        self.line(" | ".join(parts))
        if "loss_spike" in metrics:
            self.line(f"loss spike at step {step}: {metrics['loss_spike']:.1f}x the recent median")
        self.progress(step)

    def progress(self, step: int) -> None:
        """Move the bar to `step` (terminals only)."""
        if not self.interactive:
            return
        if self._bar is None:
            self._bar = tqdm(
                total=self.max_steps, initial=step, file=self.stream, unit="step", dynamic_ncols=True, leave=False
            )
        self._bar.update(step - self._bar.n)
        if step >= self.max_steps:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
