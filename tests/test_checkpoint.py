"""Which checkpoint a run resumes from: only complete ones, whatever a killed save left behind; and each file
checked against the marker's checksums, loaded without running code."""

import json
import os
from pathlib import Path

import pytest
import torch

from pretrain.errors import CheckpointError
from pretrain.layout import LATEST_NAME as LATEST
from pretrain.layout import MARKER_NAME as COMPLETE
from pretrain.weights.checkpoint import restore_rng_states, rng_states
from pretrain.weights.checkpoint_files import describe_file, load_torch_file, verify
from pretrain.weights.checkpoint_folder import checkpoint_dir, complete_tags, latest_tag, prune, write_marker


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
    prune(checkpoint_dir(tmp_path), keep_last=2)
    assert complete_tags(checkpoint_dir(tmp_path)) == tags[3:]
    assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == tags[3:]


def saved_checkpoint(run_dir: Path) -> Path:
    """A checkpoint folder as the trainer writes it: torch files and a marker listing their checksums."""
    folder = checkpoint_dir(run_dir) / "step_00000001"
    folder.mkdir(parents=True)
    files = {}
    for name, value in [("mp_rank_00_model_states.pt", {"module": {"w": torch.ones(3)}, "rng": rng_states()})]:
        torch.save(value, folder / name)
        files[name] = describe_file(folder / name)
    torch.save(
        {"optimizer_state_dict": {"step": torch.tensor(1.0)}}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    )
    files["zero_pp_rank_0_mp_rank_00_optim_states.pt"] = describe_file(
        folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    )
    write_marker(folder, files, {"step": 1})
    return folder


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this would run",))


def test_an_intact_checkpoint_verifies_and_its_random_state_loads_weights_only(tmp_path):
    folder = saved_checkpoint(tmp_path)
    assert verify(folder)["step"] == 1
    state = load_torch_file(folder / "mp_rank_00_model_states.pt")  # weights_only: no NumPy objects in the state
    restore_rng_states(state["rng"])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1])), "its checksum differs"),
        (lambda f: f.unlink(), "missing"),
        (lambda f: f.write_bytes(f.read_bytes() + b"0"), "bytes, the marker says"),
        (lambda f: (f.parent / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"x"), "not listed"),
    ],
    ids=["one-bit", "missing", "longer", "unlisted"],
)
def test_damage_is_named_with_the_file(tmp_path, damage, message):
    folder = saved_checkpoint(tmp_path)
    damage(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointError, match=rf"the checkpoint is damaged:\n  {folder}/zero_pp_rank_.*{message}"):
        verify(folder)


def test_a_file_that_would_run_code_is_refused_even_with_a_matching_checksum(tmp_path):
    folder = saved_checkpoint(tmp_path)
    planted = folder / "mp_rank_00_model_states.pt"
    torch.save({"module": RunsCode()}, planted)
    marker = json.loads((folder / COMPLETE).read_text())
    marker["files"][planted.name] = describe_file(planted)  # whoever planted it rewrote the marker too
    (folder / COMPLETE).write_text(json.dumps(marker))
    refused = rf"{planted}: refused: loading it would run code \(it calls posix.system\).*nothing was run"
    with pytest.raises(CheckpointError, match=refused):
        verify(folder)
    with pytest.raises(CheckpointError, match=refused):
        load_torch_file(planted)


def test_a_marker_from_before_checksums_still_marks_a_complete_checkpoint(tmp_path, capsys):
    folder = saved_checkpoint(tmp_path)
    (folder / COMPLETE).write_text("")
    assert complete_tags(checkpoint_dir(tmp_path)) == ["step_00000001"]
    assert verify(folder)["files"] is None
    assert "saved without checksums (by an earlier pretrain): not verified" in capsys.readouterr().err
