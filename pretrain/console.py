"""What rank 0 prints: a line every log interval, and a progress bar between them on a terminal.

The bar is redrawn in place with a carriage return, so it only appears when
stdout is a terminal; a log file or a pipe gets the lines alone.
"""

from __future__ import annotations

import sys

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
