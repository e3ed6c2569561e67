"""One process at a time per batch job: an exclusive claim that the OS gives back on a crash.

Two runs of one job (`caption folder/ --write` typed twice, or `jobs resume 3` while the
window runs job 3) would caption the same images into the same files at the same time. So a
run claims its job first: a non-blocking exclusive lock on

    <library dir>/locks/<library file stem>-job-<id>.lock      (locks/library-job-3.lock)

taken with flock on POSIX and msvcrt.locking on Windows (oslock.py), held for the whole run. The OS
drops the lock when the process ends in any way (kill -9 and crashes included), so a dead
run never leaves its job claimed: there is no stale lock to clean and no pid to check. The
library file's stem is in the name so that two libraries in one folder never share claims.

    with claim_job(library.path, job_id):       # JobBusy if another process runs the job
        ...                                     # caption, write files, mark items

The lock file holds nothing. On POSIX the holder removes it as it lets go (see
JobClaim._open for why that is safe); Windows cannot remove an open file, so there it stays,
empty, and is reused by the next claim.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..oslock import is_current, try_lock, unlock
from ..paths import private_dir

# is_claimed holds a lock for an instant to test it; a claim made in that instant waits this
# long before believing the job is taken (and so does a check racing another check).
PATIENCE_S = 0.2
RETRY_S = 0.01

class JobBusy(Exception):
    """The job is being run by another process (or by another run in this one)."""

    def __init__(self, job_id: int, shared_images: int = 0) -> None:
        what = (f"job {job_id} is being run by another SmolVLM Desktop process" if not shared_images else
                f"job {job_id}, running in another SmolVLM Desktop process, is writing captions for "
                f"{shared_images} of these images to the same kind of files")
        super().__init__(f"{what}; wait for it to end (or stop it there), then try again")
        self.job_id = job_id


def lock_path(library_path: str | os.PathLike[str], job_id: int) -> Path:
    library = Path(library_path)
    return library.parent / "locks" / f"{library.stem}-job-{job_id}.lock"


def _lock(fd: int, patience_s: float) -> bool:
    """Take the lock, retrying for patience_s; False if it stays taken."""
    deadline = time.monotonic() + patience_s
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(RETRY_S)
    return True


class JobClaim:
    """The claim on one job, held from construction until release() (or the `with` block's
    end, or the process's end). Construction raises JobBusy if someone else holds it."""

    def __init__(self, path: Path, job_id: int) -> None:
        self.path, self.job_id = path, job_id
        private_dir(path.parent)
        self._fd: int | None = self._open()

    def _open(self) -> int:
        """Open and lock the file at self.path.

        A POSIX holder unlinks the file before it lets go. Whoever locks the old file just
        then holds a file no longer at self.path, which a newcomer would create afresh and
        lock too: so a lock on a file that is not the current one is dropped and retried."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if not _lock(fd, PATIENCE_S):
                os.close(fd)
                raise JobBusy(self.job_id)
            if is_current(fd, self.path):
                return fd
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the job back (again: nothing happens)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.name == "nt":
            unlock(fd)
            os.close(fd)
            _remove(self.path)  # fails harmlessly if another claim has it open already
        else:
            _remove(self.path)  # while still locked: nobody else can hold this file now
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> "JobClaim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def claim_job(library_path: str | os.PathLike[str], job_id: int) -> JobClaim:
    """Claim a job of the library at library_path for this run; JobBusy if it is taken."""
    return JobClaim(lock_path(library_path, job_id), job_id)


def claimed_jobs(library_path: str | os.PathLike[str]) -> list[int]:
    """The ids of the library's jobs that some process runs right now (a snapshot), found
    from the lock files alone: it works when the library file itself cannot be read."""
    prefix = f"{Path(library_path).stem}-job-"
    ids = []
    for lock in lock_path(library_path, 0).parent.glob(f"{prefix}*.lock"):
        number = lock.name[len(prefix):-len(".lock")]
        if number.isdigit() and is_claimed(library_path, int(number)):
            ids.append(int(number))
    return sorted(ids)


def is_claimed(library_path: str | os.PathLike[str], job_id: int) -> bool:
    """Is the job being run right now (by another process, or another run in this one)?

    Creates nothing: without a lock file nobody holds the job. It takes the lock for an
    instant to test it, which a claim made at that moment rides out (PATIENCE_S). Only a
    snapshot: to run the job, claim it (claim_job), which is the test that counts."""
    try:
        fd = os.open(lock_path(library_path, job_id), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if not _lock(fd, PATIENCE_S):
            return True
        unlock(fd)
        return False
    finally:
        os.close(fd)
