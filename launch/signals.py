"""SIGTERM and Ctrl-C to a command that runs a job: noted from its first moment, then passed to the ranks.

A scheduler asks a job to stop with SIGTERM (Slurm before a time limit,
`pretrain jobs cancel`), a person with Ctrl-C. Either may come at any moment:
while the command checks the job, while the ranks start, or while they
train. The ranks stop cleanly on SIGTERM: each finishes its step, they save
a checkpoint together and exit 0 (pretrain/train/preemption.py). So:

- before the ranks start, the command notes the signal and starts nothing;
- once they run, it passes SIGTERM to the ranks themselves (not to the
  launcher between, which would kill them), and again every second until
  they have exited: a rank still starting up ignores SIGTERM, as the
  launcher that started it does, until it installs its own handler;
- a first Ctrl-C does what SIGTERM does, and the command then exits 130;
  a second one kills the ranks at once: a checkpoint half written then is
  never used (pretrain/weights/checkpoint.py), so the last complete one is intact.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import psutil

RESEND_SECONDS = 1.0
INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


class JobSignals:
    """Installs handlers for SIGTERM and SIGINT when made; `wait` passes them on to a launched job's ranks.

    One a process: `watch()` makes it or returns the one made before.
    """

    def __init__(self, stop_line: str = "the ranks finish their step and save a checkpoint"):
        self.stop_line = stop_line
        self.sigterm = False
        self.interrupts = 0
        self.process: subprocess.Popen | None = None
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}

    def close(self) -> None:
        """Put back the handlers there were before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def stopped(self) -> bool:
        return self.sigterm or self.interrupts > 0

    def exit_code(self, returncode: int) -> int:
        """The command's exit code: 130 after Ctrl-C (once the ranks stopped cleanly), else the job's."""
        return INTERRUPTED if self.interrupts and returncode == 0 else returncode

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            self.sigterm = True
        else:
            self.interrupts += 1
            if self.interrupts > 1:
                self.kill()
                raise KeyboardInterrupt  # the command's own handler says so and exits 130
            print(f"\nCtrl-C: {self.stop_line}; press Ctrl-C again to stop at once", file=sys.stderr, flush=True)
        self.pass_to_ranks()

    def pass_to_ranks(self) -> None:
        """SIGTERM to the ranks (the processes a launcher gave a LOCAL_RANK), not to the launcher between."""
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):  # gone already, or not ours to read
                    if "LOCAL_RANK" in child.environ():
                        child.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the launcher and every process under it."""
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            launcher = psutil.Process(self.process.pid)
            for process in [*launcher.children(recursive=True), launcher]:
                with contextlib.suppress(psutil.Error):
                    process.kill()

    def wait(self, process: subprocess.Popen) -> int:
        """Wait for the launcher to exit; while a stop is asked for, say so to the ranks every second."""
        self.process = process
        if self.stopped:  # asked while the ranks were being started
            self.pass_to_ranks()
        while True:
            # A wait with a time limit: a blocking one would not wake up to send again.
            try:
                return process.wait(timeout=RESEND_SECONDS)
            except subprocess.TimeoutExpired:
                if self.stopped:
                    self.pass_to_ranks()


_watching: list[JobSignals] = []


def watch(stop_line: str = "the ranks finish their step and save a checkpoint") -> JobSignals:
    """The process's JobSignals, made on the first call: call it as early as the command can."""
    if not _watching:
        _watching.append(JobSignals(stop_line))
    return _watching[0]


def unwatch() -> None:
    """Put back the handlers there were before `watch` (a command that ran inside another program)."""
    if _watching:
        _watching.pop().close()
