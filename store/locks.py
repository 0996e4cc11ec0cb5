"""Exclusive file locks (fcntl.flock) that the operating system releases when their holder dies.

Two uses:
- `writer_lock(folder)`: one writer per sample store at a time. It never waits:
  a second writer gets a `UsageError` naming the holder (pid, host, command,
  since when), read from the lock file, which the holder rewrites on taking it.
  Within one process the lock is shared and counted, so several `SampleStore`
  handles of one folder do not lock each other out.
- `waiting_lock(path)`: a short critical section across processes (creating
  MLflow's tracking database); it waits for the holder instead of failing.

flock locks belong to an open file, not to a path: the lock file is never
deleted (deleting it would let a second process lock a new file of the same
name while the first still holds the old one). On NFS, flock may be local to
one machine. This module never reads or writes samples.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from policy import jsonsafe
from policy.errors import TTCError, UsageError

WRITER_LOCK_NAME = ".writer.lock"

_held: dict[str, list[int]] = {}  # realpath of a lock file -> [fd, handles holding it]
_held_guard = threading.Lock()


def _holder_line() -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


def describe_holder(lock_file: Path) -> str:
    """The holder a lock file names, in words (or why it cannot be told)."""
    try:
        info = jsonsafe.loads(lock_file.read_bytes(), str(lock_file))
        return f"pid {info['pid']} on {info['host']} (`{info['command']}`, since {info['since']})"
    except (OSError, TTCError, KeyError, TypeError):
        return "another process (its lock file names no holder yet)"


def acquire_writer_lock(folder: Path) -> str:
    """Take (or share, within this process) the writer lock of `folder`; returns the key to release it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WRITER_LOCK_NAME
    key = os.path.realpath(path)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            return key
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"store {str(folder)!r} is being written by {describe_holder(path)}; "
                "wait for that writer to finish (or stop it), or pass another --store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_line().encode(), 0)
        _held[key] = [fd, 1]
        return key


def release_writer_lock(key: str) -> None:
    """Drop one handle's share of a writer lock; the last one unlocks and closes the file."""
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            os.close(entry[0])  # closing the last descriptor releases the flock


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for the `with` block, waiting for any holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
