"""Hang detection: every rank publishes where it is; a job where none moves for `train.hang_timeout_s` stops.

A rank that stops (a dead host, a SIGSTOP, a deadlock) leaves the others
waiting in their next collective, silently, until the scheduler's time limit.
So each rank's training loop marks its step and phase (data, forward,
backward, optimizer, checkpoint, eval: a few assignments, no I/O), and a
thread of each rank writes them every few seconds to
`<run>/heartbeats/rank_NNNNN.json`, with the time it last wrote. The run
folder is shared by the job's hosts (checkpoints need that already), so the
same thread reads every rank's file: when no rank has moved for the timeout,
the ranks to blame are those whose thread stopped writing (their process is
not running), else those behind the others (the rest wait for them), else
all (a collective that never completed).

Then the job stops rather than wait: each running rank writes its Python
stack (faulthandler) to `<run>/hangs/step_N/`, the first running rank on a
host reads the stack of each stopped rank there with py-spy (installed with
ray[default]) and then kills it, the first running rank of the job writes the
report, prints it and logs it to MLflow (rank 0's tracker, when rank 0 is
running), and every running rank exits with HANG_EXIT_CODE, so the restart
policy (launch.max_restarts) applies. A timeout must be longer than the
longest phase: a checkpoint save, a validation run, the first compiled step.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from pretrain.layout import HANGS_DIR, HEARTBEATS_DIR, write_json_atomically

PHASES = ("data", "forward", "backward", "optimizer", "eval", "checkpoint")
FINISHED = "finished"  # a rank past its loop: it no longer moves, and is not stalled
HANG_EXIT_CODE = 75  # what a rank that stopped a hung job exits with
MAX_PERIOD_S = 5.0


class Heartbeat:
    """This rank's progress, published by a thread that also watches every other rank's."""

    def __init__(
        self,
        run_dir: Path,
        rank: int,
        world_size: int,
        timeout_s: float,
        report: Callable[[str, Path], None],
        attempt: str,
    ):
        self.folder, self.hangs = run_dir / HEARTBEATS_DIR, run_dir / HANGS_DIR
        self.rank, self.world_size, self.timeout_s, self.report = rank, world_size, timeout_s, report
        self.attempt = attempt  # the same in every rank of this start of the job (read_beats)
        self.period_s = min(MAX_PERIOD_S, timeout_s / 4)
        self.step, self.phase, self.moved_at = 0, "data", time.time()
        self._started_at = psutil.Process().create_time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pretrain-heartbeat", daemon=True)

    def beat(self, step: int, phase: str) -> None:
        """Called by the training loop at each phase: cheap, no I/O."""
        self.step, self.phase, self.moved_at = step, phase, time.time()

    def start(self) -> Heartbeat:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._publish()
        self._thread.start()
        return self

    def stop(self) -> None:
        """The loop is over: say so, so that waiting at the finish is not taken for a hang."""
        self._stop.set()
        self._thread.join()
        self.phase = FINISHED
        self._publish()

    def _publish(self) -> None:
        beat = {
            "attempt": self.attempt,
            "rank": self.rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started_at,  # with the pid: this process, not a later one given its number
            "step": self.step,
            "phase": self.phase,
            "moved_at": self.moved_at,
            "alive_at": time.time(),
        }
        write_json_atomically(self.folder / f"rank_{self.rank:05d}.json", beat)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._publish()
            beats = read_beats(self.folder, self.world_size, self.attempt)
            stalled = stalled_ranks(beats, time.time(), self.timeout_s, self.world_size)
            if stalled:
                self._stop_hung_job(beats, stalled)

    def _stop_hung_job(self, beats: dict[int, dict], stalled: list[int]) -> None:
        running = [rank for rank, beat in beats.items() if rank not in stalled or is_alive(beat, self.timeout_s)]
        folder = self.hangs / f"step_{max(beat['step'] for beat in beats.values()):08d}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"stack-rank_{self.rank:05d}.txt", "w") as stack:
            faulthandler.dump_traceback(stack, all_threads=True)
        host = socket.gethostname()
        if self.rank == min(rank for rank in running if beats[rank]["host"] == host):
            for rank in stalled:
                process = same_process(beats[rank]) if beats[rank]["host"] == host else None
                if process and not is_alive(beats[rank], self.timeout_s):
                    (folder / f"stack-rank_{rank:05d}.txt").write_text(stack_of_stopped(process.pid))
                    # A stopped process ignores the launcher's SIGTERM: torchrun would wait out its
                    # 30-s grace period before its SIGKILL, and only then restart the job.
                    with contextlib.suppress(psutil.Error):
                        process.kill()
        if self.rank == min(running):
            message = describe_hang(beats, stalled, self.timeout_s, folder)
            self.report(message, folder)
            report = {"message": message, "detected_at": time.time(), "stalled": stalled, "beats": beats}
            write_json_atomically(folder / "report.json", report)
        else:  # the reporter may need a moment: leaving now could have the launcher stop it mid-report
            deadline = time.time() + 10
            while not (folder / "report.json").exists() and time.time() < deadline:
                time.sleep(0.2)
        os._exit(HANG_EXIT_CODE)


def read_beats(folder: Path, world_size: int, attempt: str) -> dict[int, dict]:
    """Every rank's last heartbeat in this attempt, by rank; a rank that has not written one yet is left out.

    After a restart the folder still holds the beats of the attempt before,
    long still, of ranks that have not started again yet: counted, they were
    blamed for a hang while they started.
    """
    beats = {}
    for rank in range(world_size):
        try:
            beat = json.loads((folder / f"rank_{rank:05d}.json").read_text())
        except (OSError, ValueError):
            continue  # not started yet, or being replaced at this moment
        if beat.get("attempt") == attempt:
            beats[rank] = beat
    return beats


def same_process(beat: dict) -> psutil.Process | None:
    """The process a heartbeat on this host was written by, if it still exists."""
    try:
        process = psutil.Process(beat["pid"])
        return process if process.create_time() == beat["started_at"] else None
    except psutil.Error:
        return None


def is_alive(beat: dict, timeout_s: float) -> bool:
    return beat["phase"] == FINISHED or time.time() - beat["alive_at"] < timeout_s


def position(beat: dict) -> tuple[int, int]:
    return beat["step"], PHASES.index(beat["phase"]) if beat["phase"] in PHASES else len(PHASES)


def stalled_ranks(beats: dict[int, dict], now: float, timeout_s: float, world_size: int) -> list[int]:
    """The ranks to blame when no rank has moved for `timeout_s`; empty while the job moves.

    Nothing is judged until every rank has published: one that has not is
    still starting (rank 0 opens the tracking run before its loop, which a
    slow server makes long), and the others wait for it in their first
    collective without moving. A rank that dies before that is its
    launcher's to see; one that stops there, the collectives' timeout's.
    """
    if len(beats) < world_size:
        return []
    active = {rank: beat for rank, beat in beats.items() if beat["phase"] != FINISHED}
    if not active or now - max(beat["moved_at"] for beat in active.values()) < timeout_s:
        return []
    stopped = [rank for rank, beat in active.items() if now - beat["alive_at"] >= timeout_s]
    if stopped:
        return stopped
    furthest = max(position(beat) for beat in active.values())
    behind = [rank for rank, beat in active.items() if position(beat) < furthest]
    return behind or sorted(active)


def stack_of_stopped(pid: int) -> str:
    """A stopped process's Python stack, read from outside by py-spy, which needs no help from the process."""
    beside = Path(sys.executable).with_name("py-spy")  # in the job's environment, which need not be on PATH
    py_spy = shutil.which("py-spy") or (str(beside) if beside.is_file() else None)
    if py_spy is None:
        return f"process {pid}: its stack was not read: py-spy is not installed (pip install py-spy)\n"
    try:
        # --nonblocking: read the memory as it is; py-spy's own pause fails on a process already stopped.
        command = [py_spy, "dump", "--nonblocking", "--pid", str(pid)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return f"process {pid}: py-spy did not finish reading its stack in 30 s\n"
    return result.stdout + result.stderr


def describe_hang(beats: dict[int, dict], stalled: list[int], timeout_s: float, folder: Path) -> str:
    """The report: who stopped where, and what the others wait for."""
    now = time.time()
    lines = []
    for rank in stalled:
        beat = beats[rank]
        state = "its process is not running" if not is_alive(beat, timeout_s) else "its process runs but does not move"
        since = now - beat["moved_at"]
        lines.append(
            f"  rank {rank} ({beat['host']}, pid {beat['pid']}): step {beat['step']}, {beat['phase']}, "
            f"no progress for {since:.0f} s; {state}"
        )
    others, them = sorted(set(beats) - set(stalled)), "it" if len(stalled) == 1 else "them"
    if len(others) == 1:
        waiting = f"rank {others[0]} waits for {them}"
    else:
        waiting = f"ranks {', '.join(map(str, others))} wait for {them}" if others else "no rank moves"
    return (
        f"hang: no rank made progress for {timeout_s:g} s (train.hang_timeout_s); {waiting}:\n"
        + "\n".join(lines)
        + f"\nevery running rank's Python stack is in {folder}; the job stops so that launch.max_restarts "
        f"can restart it from the last checkpoint"
    )
