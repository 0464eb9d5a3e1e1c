"""A checkpoint's files, read back safely: checked against the checksums of its marker, and loaded without running code.

The marker (`complete`), which rank 0 writes once every rank's files are on
disk (pretrain/weights/checkpoint.py), is JSON: what the checkpoint is, and every
file with its size and checksum.

    {"format": 1, "digest": "xxh3_128", "step": 40, "tokens_seen": 40960,
     "files": {"mp_rank_00_model_states.pt": {"bytes": 389105, "xxh3_128": "9f0c..."}, ...},
     "config": {...}, "data_fingerprint": "...", "mlflow_run_id": "...", "train_loss": 3.9, "val_loss": 4.1}

The checksum is xxHash's XXH3-128: it catches a flipped bit as surely as
sha256 for our purpose (damage, not an adversary, who could rewrite the
marker too) at six times the speed (docs/benchmarks.md), so verifying costs
a fraction of reading the files. Markers written before checksums (empty
files) still mark complete checkpoints, which load unverified, with a
warning.

DeepSpeed's files are pickles, and a pickle can run any code when it is
loaded: a run folder handed over by someone else could carry it. Every load
here is `torch.load(weights_only=True)`, which rebuilds only tensors, plain
containers and the few types allowed below (what DeepSpeed and our client
state store); anything else is refused, naming the file, and nothing runs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch
import xxhash

from pretrain.errors import CheckpointError, CheckpointRefused
from pretrain.weights.checkpoint_folder import DIGEST, read_marker

CHUNK = 8 << 20
# What torch.load reads, in the folder: every such file must be listed in the marker.
TORCH_FILES = "*.pt"


def file_digest(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_file(path: Path) -> dict:
    return {"bytes": path.stat().st_size, DIGEST: file_digest(path)}


class HashingWriter(io.RawIOBase):
    """A file opened for writing that hashes what goes through it: `torch.save(obj, writer)` then costs no read back.

    torch writes a checkpoint to a file object front to back, so the hash of
    the bytes written is the hash of the file.
    """

    def __init__(self, path: Path):
        super().__init__()
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._digest = xxhash.xxh3_128()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        written = self._file.write(data)
        self._digest.update(data)
        self.size += written
        return written

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()

    def describe(self) -> dict:
        """What the marker lists of the file: its size and checksum."""
        return {"bytes": self.size, DIGEST: self._digest.hexdigest()}


def file_problems(folder: Path, files: dict[str, dict], names: list[str]) -> dict[str, str]:
    """What is wrong with the listed files `names` of `folder`, by name: missing, of another size, or altered."""
    problems = {}
    for name in names:
        path, expected = folder / name, files[name]
        if not path.is_file():
            problems[name] = f"{path}: missing"
        elif path.stat().st_size != expected["bytes"]:
            problems[name] = f"{path}: {path.stat().st_size} bytes, the marker says {expected['bytes']}"
        elif file_digest(path) != expected[DIGEST]:
            problems[name] = f"{path}: its checksum differs from the marker's: the file was altered or damaged"
    return problems


def unlisted_files(folder: Path, files: dict[str, dict]) -> list[str]:
    """Loadable files the marker does not list: DeepSpeed finds some files by pattern, so none may be added."""
    return [f"{path}: not listed in the marker" for path in sorted(folder.glob(TORCH_FILES)) if path.name not in files]


def warn_unverified(folder: Path) -> None:
    print(f"warning: {folder} was saved without checksums (by an earlier pretrain): not verified", file=sys.stderr)


def code_problems(paths: list[Path]) -> list[str]:
    """The files that would call functions when loaded, each named with what it calls.

    A scan of each pickle's references, which runs nothing: it lets every
    rank refuse a tampered checkpoint at once, together, before any load
    starts. The loads themselves are weights_only all the same.
    """
    allow_checkpoint_types()
    problems = []
    for path in paths:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError, OSError, EOFError):
            continue  # not a readable torch file: loading it says so, naming it
        if unsafe:
            problems.append(refusal(path, ", ".join(unsafe)))
    return problems


def check_share(folder: Path, marker: dict, share: slice, unlisted: bool) -> tuple[list[str], list[str]]:
    """The damage to a share of a checkpoint's files, and the code found in the intact ones; `unlisted`: also
    name loadable files the marker does not list."""
    files = marker["files"]
    if files is None:  # saved before checksums: only what the files would run is checked
        return [], code_problems(sorted(folder.glob(TORCH_FILES))[share])
    names = sorted(files)[share]
    damaged = file_problems(folder, files, names)
    damage = list(damaged.values()) + (unlisted_files(folder, files) if unlisted else [])
    return damage, code_problems([folder / name for name in names if name not in damaged])


def verify(folder: Path) -> dict:
    """Check every file of a complete checkpoint against its marker; return the marker, or raise naming the files."""
    marker = read_marker(folder)
    if marker["files"] is None:
        warn_unverified(folder)
    damage, code = check_share(folder, marker, slice(None), unlisted=True)
    if code:
        raise CheckpointRefused("\n".join(code))
    if damage:
        raise CheckpointError("the checkpoint is damaged:\n  " + "\n  ".join(damage))
    return marker


@functools.cache
def allow_checkpoint_types() -> None:
    """Let weights_only loads rebuild the few non-tensor types in DeepSpeed's files.

    Each is data: ZeRO's stage (an enum), a loss scaler's settings, where a
    parameter lies in a flat buffer (a dataclass). NumPy's array type is for
    the random-number state of checkpoints written before the state was kept
    as plain lists. Imported here, on first need: DeepSpeed is slow to import
    and reports on stdout, a command's result.
    """
    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # NumPy 2, or 1
    numpy_types = [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    torch.serialization.add_safe_globals([ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address, *numpy_types])


def load_torch_file(path: str | Path, map_location="cpu", mmap: bool = False):
    """`torch.load` of a file this process did not write: tensors and data only; code is refused, naming the file."""
    allow_checkpoint_types()
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise CheckpointRefused(refusal(Path(path), wanted.group(1) if wanted else one_line(err))) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint file ({one_line(err)})") from None


def refusal(path: Path, called: str) -> str:
    """Why a file was not loaded: what it asked to call, which weights_only loading does not do."""
    return (
        f"{path}: refused: loading it would run code (it calls {called}), which a checkpoint never needs; nothing "
        f"was run. "
        f"The file was not written by pretrain or DeepSpeed, or was tampered with: do not use this run folder's files"
    )


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "..."


@contextlib.contextmanager
def weights_only_loads():
    """Every torch.load inside, third-party ones included (DeepSpeed's zero_to_fp32), is weights_only."""
    allow_checkpoint_types()
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def first_refused_file(paths: list[Path]) -> str | None:
    """Of files that failed a weights_only load as a group, the refusal of the first that fails alone."""
    for path in paths:
        try:
            load_torch_file(path, mmap=True)
        except CheckpointError as err:
            return str(err)
    return None
