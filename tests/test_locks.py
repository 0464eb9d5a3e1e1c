"""One writer per folder: a second writer fails at once, naming the holder; a dead holder's lock is free."""

import os
import signal
import subprocess
import sys
import time

import pytest

from data_pipeline.layout import LOCK_NAME
from data_pipeline.locks import FolderInUse, FolderLock, holder_if_locked

HOLD = """
import sys, time
from data_pipeline.locks import FolderLock
lock = FolderLock(sys.argv[1], "a test holder").acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold_in_another_process(folder) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(FolderInUse, match=rf"in use by `a test holder` \(pid {holder.pid} on "):
            FolderLock(tmp_path, "pretrain train").acquire()
        assert time.monotonic() - started < 5  # no waiting
        assert f"pid {holder.pid}" in holder_if_locked(tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path):
    holder = hold_in_another_process(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_NAME).is_file()  # its file is left, stale
    assert holder_if_locked(tmp_path) is None
    with FolderLock(tmp_path, "pretrain train") as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
    assert holder_if_locked(tmp_path) is None  # released on leaving
