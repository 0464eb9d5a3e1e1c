"""What rank 0 prints: a line every log interval, and a progress bar between them on a terminal.

The bar is redrawn in place with a carriage return, so it only appears when
stdout is a terminal; a log file or a pipe gets the lines alone.
"""

from __future__ import annotations

import sys

from pretrain.train.metrics import format_duration

BAR_WIDTH = 30


class Console:
    def __init__(self, max_steps: int, stream=None):
        self.stream = stream or sys.stdout
        self.max_steps = max_steps
        self.interactive = self.stream.isatty()
        self._bar_shown = False

    def line(self, text: str) -> None:
        self._clear_bar()
        print(text, file=self.stream, flush=True)

    def report(self, step: int, metrics: dict) -> None:
        """The line of a log interval: the step, its training metrics, and validation when there was one."""
        parts = [f"step {step:>6}/{self.max_steps}"]
        if "loss" in metrics:
            parts += [f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.2e}", f"{metrics['tokens_per_s']:,.0f} tok/s"]
            if "mfu" in metrics:
                parts.append(f"MFU {metrics['mfu']:.1%}")
            parts.append(f"ETA {format_duration(metrics['eta_s'])}")
            if metrics["skipped_steps"]:
                parts.append(f"skipped {metrics['skipped_steps']}")
        if "val_loss" in metrics:
            parts.append(f"val_loss {metrics['val_loss']:.4f} (ppl {metrics['val_perplexity']:.1f})")
        self.line(" | ".join(parts))
        if "loss_spike" in metrics:
            self.line(f"loss spike at step {step}: {metrics['loss_spike']:.1f}x the recent median")

    def progress(self, step: int) -> None:
        """Redraw the bar at `step` (terminals only)."""
        if not self.interactive:
            return
        done = BAR_WIDTH * step // self.max_steps
        bar = "#" * done + "." * (BAR_WIDTH - done)
        self.stream.write(f"\r[{bar}] {step}/{self.max_steps}")
        self.stream.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r" + " " * (BAR_WIDTH + 24) + "\r")
            self._bar_shown = False
