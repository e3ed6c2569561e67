"""Exclusive OS file locks that the OS drops when the process ends, however it
ends (kill -9 and crashes included): what the crash log's "a session runs" marker and the
batch job claims are made of, so neither ever needs a pid check or a stale-lock clean-up;
and `held`, a short blocking hold of a folder around a read-merge-write of a file that two
processes share (metadata.jsonl, captions.csv).

flock on POSIX, not lockf: a POSIX record lock belongs to the process, so a second lock in
the same process would succeed, and closing any descriptor of the file would drop it. On
Windows, msvcrt.locking of the file's first byte stands for the whole file.
"""

from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

if os.name == "nt":
    import msvcrt

    def try_lock(fd: int) -> bool:
        """Lock the open file `fd`; False if another open file (any process) holds it."""
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise
        return True

    def unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def try_lock(fd: int) -> bool:
        """Lock the open file `fd`; False if another open file (any process) holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def is_current(fd: int, path: str | os.PathLike[str]) -> bool:
    """Is the open file `fd` still the one at `path`? A lock holder that unlinks its file as it
    lets go (or a cleaner removing a stale one) can leave a newcomer holding a lock on a file
    no longer there, which the next newcomer would create afresh and lock too: such a lock
    must be dropped and taken again. Windows cannot remove an open file: always True there."""
    if os.name == "nt":
        return True
    try:
        on_disk = os.stat(Path(path))
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


@contextmanager
def held(path: str | os.PathLike[str], timeout_s: float = 60.0,
         poll_s: float = 0.02) -> Iterator[None]:
    """Hold the lock of `path` for a short critical section, waiting up to timeout_s for
    another process that holds it; TimeoutError when it is still held then.

    A folder is locked through its own descriptor on POSIX, so nothing is added to it (an
    output folder of the user's stays as they left it). On Windows, which cannot lock a
    folder, and for a file path, the lock is a file, created if missing and never removed:
    removing it on release would let a waiting process lock a file no longer at that path."""
    if os.path.isdir(path):
        if os.name == "nt":
            path = os.path.join(path, ".smolvlm.lock")
        else:
            fd = os.open(path, os.O_RDONLY)
    if not os.path.isdir(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        while not try_lock(fd):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} is still locked by another process")
            time.sleep(poll_s)
        try:
            yield
        finally:
            unlock(fd)
    finally:
        os.close(fd)
