"""DeepSpeed's checkpoint engine, as the trainer uses it: files recorded with their checksums, loaded without code.

DeepSpeed writes and reads every file of a checkpoint through its engine's
`checkpoint_engine` (model states, optimizer shards, on every rank). This one
replaces its default (`TorchCheckpointEngine`, which loads with
`weights_only=False`) on the trainer's engine:
- `save` writes as DeepSpeed's does, hashing the bytes as they are written
  (pretrain/weights/checkpoint_files.py), and records the file's size and checksum,
  which rank 0 gathers into the marker. A write that fails is recorded too, saying why ("no space left on
  device" when so), not raised: DeepSpeed's save then reaches its barrier on
  every rank, and the ranks raise the failure together (pretrain/weights/checkpoint.py)
  instead of one leaving the others waiting;
- `load` is a weights_only load, which refuses, naming the file, anything
  that would run code.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine

from pretrain.weights.checkpoint_files import HashingWriter, load_torch_file, one_line

# Below this much free space a failed write is taken for a full disk: torch's writer reports
# the failure of a write without the operating system's reason ("file write failed").
LOW_SPACE_BYTES = 64 << 20


class VerifiedCheckpointEngine(CheckpointEngine):
    """Records what this rank wrote for the checkpoint being saved: {file name: {bytes, checksum}}, and failures."""

    def __init__(self):
        super().__init__()
        self.name = "VerifiedCheckpointEngine"
        self.written: dict[str, dict] = {}
        self.failures: list[str] = []

    def create(self, info: CheckpointCommitInfo) -> None:
        self.written, self.failures = {}, []  # a new checkpoint begins

    def save(self, state_dict, path: str) -> None:
        try:
            with HashingWriter(Path(path)) as file:
                torch.save(state_dict, file)
            self.written[Path(path).name] = file.describe()
        except (RuntimeError, OSError) as err:
            self.failures.append(write_failure(Path(path), err))

    def load(self, path: str, map_location=None):
        return load_torch_file(path, map_location=map_location or "cpu")

    def commit(self, info: CheckpointCommitInfo) -> bool:
        return True


def write_failure(path: Path, err: BaseException) -> str:
    """What went wrong writing `path`, in words: a full disk said as such."""
    try:
        stats = os.statvfs(path.parent)
        free = stats.f_bavail * stats.f_frsize
    except OSError:
        free = None
    if getattr(err, "errno", None) == errno.ENOSPC or (free is not None and free < LOW_SPACE_BYTES):
        return (
            f"{path}: no space left on device ({(free or 0) / 2**20:.0f} MiB free on its file system) while saving "
            f"this checkpoint; the previous checkpoint is intact. Free some space, then run the same command "
            f"to continue from it"
        )
    return f"{path}: writing the checkpoint failed ({one_line(err)}); the previous checkpoint is intact"
