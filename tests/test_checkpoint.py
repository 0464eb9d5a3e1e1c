"""Which checkpoint a run resumes from: only complete ones, whatever a killed save left behind."""

from pathlib import Path

from pretrain.checkpoint import COMPLETE, LATEST, _prune, checkpoint_dir, complete_tags, latest_tag


def make_checkpoint(run_dir: Path, step: int, complete: bool) -> str:
    tag = f"step_{step:08d}"
    folder = checkpoint_dir(run_dir) / tag
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    if complete:
        (folder / COMPLETE).write_text("")
    return tag


def test_latest_names_a_complete_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 1, complete=True)
    second = make_checkpoint(tmp_path, 2, complete=True)
    (checkpoint_dir(tmp_path) / LATEST).write_text(second)
    assert latest_tag(tmp_path) == second


def test_a_save_killed_before_its_marker_is_skipped(tmp_path):
    first = make_checkpoint(tmp_path, 1, complete=True)
    make_checkpoint(tmp_path, 2, complete=False)  # shards half written, no marker
    (checkpoint_dir(tmp_path) / LATEST).write_text(first)
    assert latest_tag(tmp_path) == first


def test_a_latest_that_names_an_incomplete_folder_falls_back(tmp_path):
    """DeepSpeed's own `latest` (a plain write) could name a folder other ranks had not finished."""
    first = make_checkpoint(tmp_path, 1, complete=True)
    second = make_checkpoint(tmp_path, 2, complete=False)
    (checkpoint_dir(tmp_path) / LATEST).write_text(second)
    assert latest_tag(tmp_path) == first


def test_no_complete_checkpoint_means_nothing_to_resume(tmp_path):
    make_checkpoint(tmp_path, 1, complete=False)
    assert latest_tag(tmp_path) is None
    assert latest_tag(tmp_path / "elsewhere") is None


def test_pruning_keeps_the_last_complete_ones_and_drops_leftovers(tmp_path):
    tags = [make_checkpoint(tmp_path, step, complete=step != 3) for step in range(1, 6)]
    _prune(checkpoint_dir(tmp_path), keep_last=2)
    assert complete_tags(checkpoint_dir(tmp_path)) == tags[3:]
    assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == tags[3:]
