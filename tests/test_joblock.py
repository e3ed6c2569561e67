"""The per-job claim (library/joblock.py), against real second processes: refused while
another process holds it, free again the moment that process is killed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolvlm_desktop.library.joblock import JobBusy, claim_job, is_claimed, lock_path

HOLDER = r"""
import sys, time
from smolvlm_desktop.library.joblock import claim_job
claim = claim_job(sys.argv[1], int(sys.argv[2]))
print("claimed", flush=True)
time.sleep(600)
"""


def hold_in_another_process(library: Path, job_id: int) -> subprocess.Popen:
    """A real second process that claims the job and keeps it until it is killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(library), str(job_id)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    if line != "claimed\n":
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the holder did not claim the job: {line!r} {err}")
    return child


def kill(child: subprocess.Popen) -> None:
    child.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no clean-up code runs
    child.communicate(timeout=30)


def test_a_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    library = tmp_path / "library.sqlite3"
    first = claim_job(library, 3)
    assert first.held and is_claimed(library, 3)
    busy = "job 3 is being run by another SmolVLM Desktop process"
    with pytest.raises(JobBusy, match=busy) as info:
        claim_job(library, 3)
    assert info.value.job_id == 3
    first.release()
    first.release()  # twice is fine
    assert not first.held and not is_claimed(library, 3)
    with claim_job(library, 3) as again:
        assert again.held
    assert not is_claimed(library, 3)
    if os.name != "nt":
        assert not lock_path(library, 3).exists(), "a released claim leaves no file behind"


def test_claims_are_per_job_and_per_library(tmp_path: Path) -> None:
    library, other = tmp_path / "library.sqlite3", tmp_path / "other.sqlite3"
    with claim_job(library, 1):
        assert lock_path(library, 1) == tmp_path / "locks" / "library-job-1.lock"
        with claim_job(library, 2), claim_job(other, 1):
            assert is_claimed(library, 2) and is_claimed(other, 1)
        assert not is_claimed(library, 2) and not is_claimed(other, 1)


def test_checking_a_claim_creates_nothing(tmp_path: Path) -> None:
    library = tmp_path / "library.sqlite3"
    assert not is_claimed(library, 9)
    assert not (tmp_path / "locks").exists()


def test_a_claim_held_by_another_process_is_refused_and_freed_when_it_is_killed(
        tmp_path: Path) -> None:
    library = tmp_path / "library.sqlite3"
    child = hold_in_another_process(library, 3)
    try:
        assert is_claimed(library, 3)
        with pytest.raises(JobBusy):
            claim_job(library, 3)
        with claim_job(library, 4):  # only that job is taken
            pass
    finally:
        kill(child)
    assert lock_path(library, 3).exists(), "the killed process could not clean up..."
    assert not is_claimed(library, 3)  # ...but the OS let go of its lock
    with claim_job(library, 3) as claim:
        assert claim.held


RACER = r"""
import os, sys, time
from smolvlm_desktop.library.joblock import JobBusy, claim_job
library, log = sys.argv[1], sys.argv[2]
held = 0
deadline = time.monotonic() + 1.5
while time.monotonic() < deadline:
    try:
        claim = claim_job(library, 1)
    except JobBusy:
        continue
    with open(log, "a") as out:
        out.write(f"in {os.getpid()}\n")
    time.sleep(0.002)
    with open(log, "a") as out:
        out.write(f"out {os.getpid()}\n")
    claim.release()
    held += 1
print(held)
"""


@pytest.mark.skipif(os.name == "nt", reason="the unlink-on-release race exists on POSIX only")
def test_processes_racing_for_one_job_never_hold_it_together(tmp_path: Path) -> None:
    """Holders remove the lock file as they let go: a racer that locked the removed file
    must not run alongside one that locked the new file."""
    library, log = tmp_path / "library.sqlite3", tmp_path / "holders.log"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(library), str(log)],
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]
    holds = [int(r.communicate(timeout=60)[0]) for r in racers]
    assert all(r.returncode == 0 for r in racers)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * sum(holds) and sum(holds) > 10
    for enter, leave in zip(lines[::2], lines[1::2]):  # strictly one holder at a time
        assert enter.startswith("in ") and leave == "out " + enter[3:]
