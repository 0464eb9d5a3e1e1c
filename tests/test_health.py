"""Who is blamed for a hang, when a slow rank is named, and which layout changes a checkpoint takes: the
decisions of pretrain/train/heartbeat.py, stragglers.py and pretrain/weights/layout_change.py, without processes
(the runs that exercise them are in tests/test_interruptions.py and tests/test_layouts.py)."""

import json

import pytest

from pretrain.train.heartbeat import FINISHED, read_beats, stalled_ranks
from pretrain.train.resume import finished_before_this_attempt
from pretrain.train.stragglers import StragglerWatch
from pretrain.weights.layout_change import Layout, reshard_problem

NOW = 1000.0


def beat(step: int, phase: str, moved_ago: float, alive_ago: float = 1.0) -> dict:
    return {"step": step, "phase": phase, "moved_at": NOW - moved_ago, "alive_at": NOW - alive_ago}


def test_a_job_that_moves_has_no_one_to_blame():
    beats = {0: beat(7, "backward", 30), 1: beat(7, "forward", 2)}  # rank 1 moved 2 s ago
    assert stalled_ranks(beats, NOW, timeout_s=10, world_size=len(beats)) == []


def test_a_stopped_process_is_blamed_not_those_waiting_for_it():
    beats = {0: beat(7, "backward", 30), 1: beat(7, "forward", 30, alive_ago=30), 2: beat(7, "backward", 30)}
    assert stalled_ranks(beats, NOW, timeout_s=10, world_size=len(beats)) == [1]


def test_a_running_rank_that_is_behind_is_blamed_and_if_none_is_every_rank():
    behind = {0: beat(7, "backward", 30), 1: beat(7, "data", 30), 2: beat(6, "optimizer", 30)}
    assert stalled_ranks(behind, NOW, timeout_s=10, world_size=3) == [1, 2]
    together = {0: beat(7, "backward", 30), 1: beat(7, "backward", 30)}  # a collective that never completed
    assert stalled_ranks(together, NOW, timeout_s=10, world_size=2) == [0, 1]


def test_no_rank_is_blamed_while_one_has_not_started_its_loop():
    """Rank 0 opens the MLflow run before its loop, and the others wait for it in their first collective: a
    slow tracking server (or 3 test workers on 2 cores) made them call a hang at step 0, blaming themselves."""
    waiting = {1: beat(0, "data", 30)}  # rank 0 has not published: it is still starting
    assert stalled_ranks(waiting, NOW, timeout_s=10, world_size=2) == []
    waiting[0] = beat(0, "data", 30)  # every rank in its loop, and none moves: judged as before
    assert stalled_ranks(waiting, NOW, timeout_s=10, world_size=2) == [0, 1]


def test_after_a_restart_the_beats_of_the_attempt_before_are_not_counted(tmp_path):
    """The restarted rank 0 opens the MLflow run again while rank 1 waits for it; rank 0's file is still the
    one its killed process left, not moved and not written for longer than the timeout. Counted, rank 0 was
    blamed for a hang while it started."""
    (tmp_path / "rank_00000.json").write_text(json.dumps({"attempt": "before", **beat(5, "backward", 40, 40)}))
    (tmp_path / "rank_00001.json").write_text(json.dumps({"attempt": "now", **beat(5, "data", 30)}))
    beats = read_beats(tmp_path, world_size=2, attempt="now")
    assert list(beats) == [1]
    assert stalled_ranks(beats, NOW, timeout_s=10, world_size=2) == []


def test_finished_ranks_are_never_blamed():
    beats = {0: beat(10, FINISHED, 30, alive_ago=30), 1: beat(10, FINISHED, 30, alive_ago=30)}
    assert stalled_ranks(beats, NOW, timeout_s=10, world_size=len(beats)) == []


def test_a_rank_is_named_once_after_enough_slow_intervals_in_a_row():
    watch = StragglerWatch(factor=1.5, intervals=2, device=None)
    assert watch._straggler([0.1, 0.1, 0.4, 0.1], median=0.1, slowest=2) is None  # once: not yet
    named = watch._straggler([0.1, 0.1, 0.4, 0.1], median=0.1, slowest=2)
    assert named.startswith("straggler: rank 2 spends 0.400 s per step") and "4.0x the median rank" in named
    assert watch._straggler([0.1, 0.1, 0.4, 0.1], median=0.1, slowest=2) is None  # named already
    assert watch._straggler([0.1, 0.1, 0.12, 0.1], median=0.1, slowest=2) is None  # recovered: counting restarts
    assert watch.slow_for == 0


@pytest.mark.parametrize(
    ("saved", "now", "allowed"),
    [
        (Layout(2, 1, 1), Layout(1, 1, 1), True),
        (Layout(2, 1, 1), Layout(4, 3, 1), True),
        (Layout(2, 1, 2), Layout(1, 1, 1), True),
        (Layout(2, 3, 1), Layout(1, 3, 1), True),
        (Layout(2, 3, 1), Layout(2, 1, 1), False),  # stage 3 continues on stage 3 only
        (Layout(2, 0, 1), Layout(1, 0, 1), False),  # without ZeRO the optimizer state is not converted
        (Layout(2, 1, 1), Layout(2, 0, 1), False),
        (Layout(2, 0, 1), Layout(2, 0, 1), True),  # no change
    ],
)
def test_the_layout_changes_a_checkpoint_takes(saved, now, allowed):
    problem = reshard_problem(saved, now)
    assert (problem is None) == allowed, problem
    if problem:
        assert saved.describe() in problem and now.describe() in problem


def test_a_restart_of_a_finished_run_has_nothing_to_do_and_a_first_attempt_is_told_so(tmp_path, monkeypatch):
    """A rank that fails in the last barrier has torchrun restart ranks of a run that finished: they exit 0.
    The same command run again by a person is told the run finished (pretrain/train/resume.py)."""
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 10}))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert not finished_before_this_attempt(tmp_path, max_steps=10)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert finished_before_this_attempt(tmp_path, max_steps=10)
    assert not finished_before_this_attempt(tmp_path, max_steps=12)  # trained on: not finished
