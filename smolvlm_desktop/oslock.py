"""Exclusive, non-blocking OS file locks that the OS drops when the process ends, however it
ends (kill -9 and crashes included): what the crash log's "a session runs" marker and the
batch job claims are made of, so neither ever needs a pid check or a stale-lock clean-up.

flock on POSIX, not lockf: a POSIX record lock belongs to the process, so a second lock in
the same process would succeed, and closing any descriptor of the file would drop it. On
Windows, msvcrt.locking of the file's first byte stands for the whole file.
"""

from __future__ import annotations

import errno
import os

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
