"""The library never loses a file and never shows itself to others (issue 12, items 6-9):
private file modes, non-UTF-8 file names, forget during a running batch, and read-only or
damaged library files. Real SQLite files, real file modes, the real CLI on the demo model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop import paths
from smolvlm_desktop.cli import EXIT_ERROR, EXIT_OK, main
from smolvlm_desktop.library import db as dbmod
from smolvlm_desktop.library.db import JobsRunning, Library, LibraryUnusable
from test_joblock import hold_in_another_process, kill

FAST = ["--model", "demo", "--max-new-tokens", "4", "--threads", "1"]
POSIX = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes and byte file names")


def photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- item 6: private modes ----------------------------------------------------------------


@POSIX
def test_a_new_library_is_owner_only_folder_file_wal_and_shm(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # what most desktops use: new files 0644, folders 0755
    try:
        with Library(tmp_path / "data" / "library.sqlite3") as lib:
            lib.record_caption(tmp_path / "x.jpg", "a red car", "m", "Describe.")
            files = lib.files()
            assert [f.name for f in files] == ["library.sqlite3", "library.sqlite3-wal",
                                               "library.sqlite3-shm"]
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(tmp_path / "data") == 0o700
    finally:
        os.umask(old_umask)


@POSIX
def test_a_library_found_open_to_others_is_made_private_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "data"
    with Library(folder / "library.sqlite3") as lib:
        lib.record_caption(tmp_path / "x.jpg", "a red car", "m", "Describe.")
        files = lib.files()
    os.chmod(folder, 0o755)
    for file in files:
        if file.exists():  # the WAL and SHM go with the last connection
            os.chmod(file, 0o644)
    with caplog.at_level(logging.WARNING, logger="smolvlm_desktop.paths"):
        Library(folder / "library.sqlite3").close()
        said = [r.getMessage() for r in caplog.records]
        Library(folder / "library.sqlite3").close()
    assert mode(folder) == 0o700
    assert all(mode(f) == 0o600 for f in files if f.exists())
    assert len(said) >= 2 and all("open to other users" in m for m in said)
    assert [r.getMessage() for r in caplog.records] == said, "said once, not at every open"


@POSIX
def test_logs_and_job_lock_files_are_owner_only(tmp_path: Path) -> None:
    from smolvlm_desktop import crashlog

    old_umask = os.umask(0o022)
    try:
        logs = tmp_path / "data" / "logs"
        assert crashlog.enable(logs)
        try:
            crashlog.append_error(logs, "=== an error ===\n")
            created = sorted(p.name for p in logs.iterdir())
            assert {p.name: mode(p) for p in logs.iterdir()} == dict.fromkeys(created, 0o600)
        finally:
            crashlog.disable()
        assert mode(logs) == 0o700
        with Library(tmp_path / "data" / "library.sqlite3") as lib:
            job = lib.create_job({"prompt": "x"}, [tmp_path / "a.jpg"])
            with lib.claim_job(job) as claim:
                assert mode(claim.path) == 0o600 and mode(claim.path.parent) == 0o700
    finally:
        os.umask(old_umask)


# --- item 7: a file name that is not UTF-8 -------------------------------------------------


@POSIX
def test_a_non_utf8_file_name_is_stored_losslessly(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xff.png")  # a surrogate in Python: no UTF-8 text can hold it
    image = photo(tmp_path / "set" / name)
    with Library(tmp_path / "library.sqlite3") as lib:
        lib.record_caption(image, "a red car", "m", "Describe.")
        assert [c.path for c in lib.captions_for(image)] == [str(image)]
        assert [h.path for h in lib.search("red car")] == [str(image)]
        job = lib.create_job({"aggregate_dir": str(image.parent)}, [image])
        assert lib.pending_items(job) == [image]
        assert lib.job(job).settings["aggregate_dir"] == str(image.parent)
        assert lib.mark_failed(job, image, f"{image}: could not write")
        item = lib.job_item(job, image)
        assert item.path == image and item.error == f"{tmp_path}/set/caf\\xff.png: could not write"
        gone = lib.forget_folder(tmp_path / "set")
        assert (gone.images, gone.captions, gone.job_items) == (1, 1, 1)


@POSIX
def test_a_batch_with_a_non_utf8_file_name_captions_every_image(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "set"
    odd = photo(folder / os.fsdecode(b"odd\xff.png"), 1)
    photo(folder / "plain.png", 2)
    code = main(["caption", str(folder), "--write", "txt", "--json", *FAST])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    assert "Traceback" not in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["path"] for r in rows) == [f"{folder}/odd\\xff.png", f"{folder}/plain.png"]
    assert odd.with_suffix(".txt").exists() and (folder / "plain.txt").exists()
    with Library() as lib:
        assert lib.list_jobs()[0].counts["done"] == 2
        assert lib.captions_for(odd)

    assert main(["caption", str(odd), *FAST]) == EXIT_OK  # plain mode prints it too
    assert "Traceback" not in capsys.readouterr().err

    odd.with_suffix(".txt").unlink()
    odd.with_suffix(".txt").mkdir()  # its caption cannot be written: the error names the file
    code = main(["caption", str(odd), "--write", "txt", "--overwrite", "--json", *FAST])
    out, err = capsys.readouterr()
    assert code == 4 and "Traceback" not in err
    [row] = [json.loads(line) for line in out.splitlines()]
    assert not row["ok"] and row["path"] == f"{folder}/odd\\xff.png" and row["error"]


# --- item 8: forget while a batch runs on those images ----------------------------------------


def test_forget_refuses_while_another_process_runs_a_job_on_those_images(tmp_path: Path,
                                                                       capsys) -> None:
    images = [photo(tmp_path / "set" / f"img{i}.png", i) for i in range(2)]
    with Library() as lib:
        job = lib.create_job({"prompt": "x"}, images)
        lib.record_caption(images[0], "a red car", "m", "Describe.")
        other = lib.create_job({"prompt": "y"}, [tmp_path / "elsewhere.png"])
    holder = hold_in_another_process(paths.library_path(), job)
    try:
        assert main(["library", "forget", str(images[0])]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert f"batch job #{job} is captioning some of these images right now" in err
        assert "nothing was erased" in err and "Traceback" not in err
        with Library() as lib:
            assert lib.job(job).counts["total"] == 2 and lib.captions_for(images[0])
            with pytest.raises(JobsRunning):
                lib.forget_folder(tmp_path / "set")
            with pytest.raises(JobsRunning):
                lib.forget_all()
            assert lib.forget_image(tmp_path / "elsewhere.png").job_items == 1  # not held
            assert [j.id for j in lib.list_jobs()] == [job]
            del other
    finally:
        kill(holder)
    assert main(["library", "forget", str(images[0])]) == EXIT_OK
    assert "erased 1 images" in capsys.readouterr().out


def test_a_batch_whose_images_are_forgotten_meanwhile_goes_on_without_recording_them(
        tiny_model, tmp_path: Path) -> None:
    """The race forget cannot see (a resume claims the job just after forget looked): the
    job's rows vanish under the running batch, which finishes without a traceback."""
    from smolvlm_desktop.batch import BatchRunner, BatchSettings, ImageStarted
    from smolvlm_desktop.engine.types import GenerationSettings

    images = [photo(tmp_path / "set" / f"img{i}.png", i) for i in range(3)]
    events: list[object] = []

    with Library(tmp_path / "library.sqlite3") as lib:
        def on_event(event: object) -> None:
            events.append(event)
            if isinstance(event, ImageStarted) and event.index == 0:
                with sqlite3.connect(lib.path) as raw:  # another process's forget
                    raw.execute("DELETE FROM job_items WHERE path != ?", (str(images[0]),))

        settings = BatchSettings("Describe.", GenerationSettings(max_new_tokens=3))
        summary = BatchRunner(tiny_model, settings, library=lib, on_event=on_event,
                              group_size=1).run(images)
        assert summary.done == 3 and not summary.failed
        assert all(p.with_suffix(".txt").exists() for p in images)
        job = lib.job(summary.job_id)
        assert job.state == "finished" and job.counts["done"] == 1


# --- item 9: a read-only or damaged library -------------------------------------------------


def damaged_library(path: Path) -> str:
    """A library with many captions, then 16 KB in the middle overwritten; its sha256."""
    with Library(path) as lib:
        for i in range(400):
            lib.record_caption(path.parent / f"img{i}.jpg", f"caption number {i} " * 20, "m", "p")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(bytes(range(256)) * 64)
    return digest(path)


def test_a_damaged_library_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite3"
    before = damaged_library(path)
    with pytest.raises(LibraryUnusable, match="library reset"):
        Library(path)
    assert digest(path) == before


def test_caption_and_search_with_a_damaged_library_and_reset_keeps_it_aside(
        tmp_path: Path, capsys) -> None:
    library = paths.library_path()
    before = damaged_library(library)
    image = photo(tmp_path / "set" / "img.png")

    assert main(["caption", str(image), "--write", "txt", *FAST]) == EXIT_OK
    err = capsys.readouterr().err
    assert "damaged" in err and "smolvlm-desktop library reset" in err and "Traceback" not in err
    assert image.with_suffix(".txt").exists()
    assert main(["search", "caption"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "damaged" in err and "Traceback" not in err
    assert main(["jobs"]) == EXIT_ERROR
    assert digest(library) == before, "the damaged file is never written to"

    assert main(["library", "reset"]) == EXIT_OK
    out = capsys.readouterr().out
    aside = [p for p in library.parent.iterdir() if p.name.startswith("library-")
             and p.suffix == ".sqlite3"]
    assert len(aside) == 1 and str(aside[0]) in out
    assert digest(aside[0]) == before
    assert main(["caption", str(image), "--write", "txt", "--overwrite", *FAST]) == EXIT_OK
    with Library() as lib:
        assert lib.captions_for(image)


def test_a_read_only_library_still_writes_captions(tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A real read-only open (SQLite mode=ro), which is what a 0444 file gives a user who is
    not root: root writes a 0444 file anyway, so the mode alone would test nothing here."""
    with Library() as lib:
        lib.record_caption(tmp_path / "old.png", "an old caption", "m", "p")
    before = digest(paths.library_path())
    monkeypatch.setattr(dbmod, "SQLITE_OPEN_MODE", "ro")
    image = photo(tmp_path / "set" / "img.png")
    assert main(["caption", str(image), "--write", "txt", "--write", "jsonl", *FAST]) == EXIT_OK
    err = capsys.readouterr().err
    assert "cannot be written" in err and "library reset" in err and "Traceback" not in err
    assert image.with_suffix(".txt").exists() and (image.parent / "metadata.jsonl").exists()
    assert digest(paths.library_path()) == before

    assert main(["search", "old caption", "--json"]) == EXIT_OK  # reading still works
    out, err = capsys.readouterr()
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["an old caption"], err
    assert main(["jobs"]) == EXIT_OK
    assert digest(paths.library_path()) == before


UNPRIVILEGED = """
import sys
from pathlib import Path
from smolvlm_desktop.cli import main
code = main(["caption", sys.argv[1], "--write", "txt", "--model", "demo",
             "--max-new-tokens", "3", "--threads", "1"])
sys.exit(code or main(["search", "old caption"]))
"""


@POSIX
@pytest.mark.parametrize("read_only", ["file 0444", "folder 0555"])
def test_a_read_only_library_as_an_unprivileged_user(tmp_path: Path, read_only: str) -> None:
    """The real modes, as user nobody (root ignores them): needs root to switch user, and
    nobody must be able to reach the venv and this checkout."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root and setpriv to run a process as an unprivileged user")
    base = Path("/tmp") / f"smolvlm-ro-{os.getpid()}-{read_only[:4]}"
    subprocess.run(["rm", "-rf", str(base)], check=True)
    data, image = base / "data", photo(base / "set" / "img.png")
    with Library(data / "library.sqlite3") as lib:
        lib.record_caption(base / "old.png", "an old caption", "m", "p")
    for p in [base, *base.rglob("*")]:
        os.chown(p, 65534, 65534)
    os.chmod(base, 0o755)
    if read_only == "file 0444":
        os.chmod(data / "library.sqlite3", 0o444)
    else:
        os.chmod(data, 0o555)
    before = digest(data / "library.sqlite3")
    env = {**os.environ, "SMOLVLM_DATA_DIR": str(data), "HOME": str(base),
           "SMOLVLM_CACHE_DIR": str(base / "cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import smolvlm_desktop.cli"],
                           env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        subprocess.run(["rm", "-rf", str(base)], check=True)
        pytest.skip(f"user nobody cannot run this checkout's Python here: {probe.stderr[-200:]}")
    try:
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-c", UNPRIVILEGED, str(image)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == EXIT_OK, done.stderr
        assert "cannot be written" in done.stderr and "Traceback" not in done.stderr
        assert f"{base}/old.png" in done.stdout, "a read-only library can still be searched"
        assert image.with_suffix(".txt").exists()
        assert digest(data / "library.sqlite3") == before
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


@POSIX
@pytest.mark.parametrize("first", ["crash log", "models default demo"])
def test_a_data_folder_made_by_another_part_first_is_private_too(
        tmp_path: Path, first: str, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever creates the data folder first creates it owner-only, so the library opened
    next has nothing to fix and nothing to warn about."""
    from smolvlm_desktop import crashlog

    old_umask = os.umask(0o022)
    try:
        if first == "crash log":
            assert crashlog.enable(paths.data_dir() / "logs")
            crashlog.disable()
        else:
            assert main(["models", "default", "demo"]) == EXIT_OK
        assert mode(paths.data_dir()) == 0o700
        with caplog.at_level(logging.WARNING, logger="smolvlm_desktop.paths"):
            Library().close()
        assert caplog.records == []
    finally:
        os.umask(old_umask)


def test_a_library_that_fails_mid_batch_is_left_and_the_captions_still_written(
        tiny_model, tmp_path: Path) -> None:
    """SQLite refuses every write from the second image on (query_only: what a library
    made read-only or on a full disk answers); the batch writes every caption file."""
    from smolvlm_desktop.batch import BatchRunner, BatchSettings, ImageDone, LibraryStopped
    from smolvlm_desktop.engine.types import GenerationSettings

    images = [photo(tmp_path / "set" / f"img{i}.png", i) for i in range(3)]
    events: list[object] = []
    with Library(tmp_path / "library.sqlite3") as lib:
        def on_event(event: object) -> None:
            events.append(event)
            if isinstance(event, ImageDone) and event.path == images[0]:
                with lib._lock:
                    lib._conn.execute("PRAGMA query_only = ON")

        settings = BatchSettings("Describe.", GenerationSettings(max_new_tokens=3))
        summary = BatchRunner(tiny_model, settings, library=lib, on_event=on_event,
                              group_size=1).run(images)
        with lib._lock:
            lib._conn.execute("PRAGMA query_only = OFF")
        assert summary.done == 3 and not summary.failed
        assert all(p.with_suffix(".txt").exists() for p in images)
        stopped = [e for e in events if isinstance(e, LibraryStopped)]
        assert len(stopped) == 1 and "readonly" in stopped[0].reason
        job = lib.job(summary.job_id)
        assert job.counts["done"] == 1 and lib.job_status(job) == "interrupted"


def test_reset_refuses_while_a_batch_runs_on_the_library(tmp_path: Path, capsys) -> None:
    with Library() as lib:
        job = lib.create_job({"prompt": "x"}, [tmp_path / "a.png"])
    before = digest(paths.library_path())
    holder = hold_in_another_process(paths.library_path(), job)
    try:
        assert main(["library", "reset"]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert f"batch job #{job} is running on this library" in err and "Traceback" not in err
        assert digest(paths.library_path()) == before
        assert sorted(p.name for p in paths.data_dir().glob("library-*")) == []
    finally:
        kill(holder)
    assert main(["library", "reset"]) == EXIT_OK
    assert not paths.library_path().exists()
