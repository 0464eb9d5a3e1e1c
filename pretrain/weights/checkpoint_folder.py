"""A run's checkpoints folder on disk: its tags, which are complete, the newest, and what their markers say.

    checkpoints/
      latest             the tag of the newest complete checkpoint, written after its marker
      step_00000100/     one checkpoint: every rank's files, and `complete`, the marker, written last
      corrupt-step_N/    a damaged checkpoint, moved aside: never used again, never deleted by rotation

No torch here: the launcher reads this folder (what to resume from, whether
a setting changed) before any rank starts, and should not pay for importing
torch to do it. Saving and loading through DeepSpeed is pretrain/weights/checkpoint.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pretrain.errors import CheckpointError
from pretrain.layout import CHECKPOINTS_DIR, LATEST_NAME, MARKER_NAME, QUARANTINE_PREFIX, write_json_atomically

MARKER_FORMAT = 1
DIGEST = "xxh3_128"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS_DIR


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("step_"))


def complete_tags(directory: Path) -> list[str]:
    """The tags of complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob("step_*") if (p / MARKER_NAME).is_file())


def prune(directory: Path, keep_last: int) -> None:
    """Remove all but the last `keep_last` complete checkpoints, and what killed saves left behind."""
    keep = set(complete_tags(directory)[-keep_last:])
    for path in directory.glob("step_*"):
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path)


def latest_tag(run_dir: Path) -> str | None:
    """The newest complete checkpoint: the one `latest` names, or the newest with a marker if it is not complete."""
    directory = checkpoint_dir(run_dir)
    named = (directory / LATEST_NAME).read_text().strip() if (directory / LATEST_NAME).is_file() else None
    if named and (directory / named / MARKER_NAME).is_file():
        return named
    tags = complete_tags(directory)
    return tags[-1] if tags else None


def candidates(run_dir: Path) -> list[str]:
    """The complete checkpoints to resume from, in the order to try them: the latest, then older ones."""
    latest = latest_tag(run_dir)
    older = [tag for tag in reversed(complete_tags(checkpoint_dir(run_dir))) if tag != latest]
    return ([latest] if latest else []) + older


def quarantine(folder: Path) -> Path:
    """Move a damaged checkpoint aside, where neither resume nor rotation looks."""
    target = folder.with_name(QUARANTINE_PREFIX + folder.name)
    suffix = 1
    while target.exists():
        suffix += 1
        target = folder.with_name(f"{QUARANTINE_PREFIX}{folder.name}.{suffix}")
    folder.rename(target)
    return target


def saved_info(run_dir: Path, tag: str) -> dict:
    """What the marker of a checkpoint says besides its files (the config it was saved with, its step...)."""
    return read_marker(checkpoint_dir(run_dir) / tag)


def write_marker(folder: Path, files: dict[str, dict], info: dict) -> Path:
    marker = {"format": MARKER_FORMAT, "digest": DIGEST, **info, "files": dict(sorted(files.items()))}
    return write_json_atomically(folder / MARKER_NAME, marker)


def read_marker(folder: Path) -> dict:
    """The marker of a complete checkpoint; `files` is None in a marker written before checksums."""
    path = folder / MARKER_NAME
    text = path.read_text()
    if not text.strip():
        return {"files": None}
    try:
        marker = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the checkpoint's marker is damaged ({err})") from None
    if not isinstance(marker, dict) or marker.get("digest") != DIGEST or not isinstance(marker.get("files"), dict):
        raise CheckpointError(f"{path}: not a checkpoint marker this version of pretrain reads")
    return marker
