"""One writer per folder: a lock on a run folder or a dataset folder, naming its holder.

Two training runs writing one run folder, or two builds writing one dataset,
each overwrite what the other wrote; the lock makes the second fail at once,
saying which process (pid, host, command, since when) holds the folder.

The lock is the kernel's `flock` on `<folder>/.lock`, held for as long as the
process keeps the file open. The kernel releases it when the process ends,
however it ends (kill -9 included), so a lock is never left stale: a lock
file whose holder died is simply taken over. The file's content (JSON) only
tells a waiting process who holds it. On NFS, Linux maps `flock` onto NFS
locks, which a server releases when the client that held them is gone; a
file system without locks is named in a warning, and the work goes on
unlocked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Self

from data_pipeline.errors import DataError
from data_pipeline.layout import LOCK_NAME


class FolderInUse(DataError):
    """Another process holds the folder's lock."""


class FolderLock:
    """`with FolderLock(folder, "pretrain train"):` holds `folder`'s lock, or raises FolderInUse."""

    def __init__(self, folder: Path, purpose: str):
        self.folder, self.purpose = Path(folder), purpose
        self.path = self.folder / LOCK_NAME
        self._file = None

    def acquire(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (kept open: the lock lives as long as the file is open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(read_holder(self.path))
            handle.close()
            raise FolderInUse(
                f"{self.folder} is in use by {holder}; one process at a time may write it: wait for that one to "
                f"end or stop it (if it ran on a host that died, the lock is released when that host's lease ends)"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                handle.close()
                raise
            print(
                f"warning: {self.path}: this file system has no locks; nothing stops a second writer", file=sys.stderr
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.purpose,
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the lock
            self._file = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"`{holder.get('command')}` (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"


def holder_if_locked(folder: Path) -> str | None:
    """Who holds `folder`'s lock now, in words; None when it is free. Takes nothing."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe_holder(read_holder(path))
        except OSError:
            return None
    return None
