"""Resuming after a crash: every image captioned once, one row per image, no half file.

The first tests build each crash state by hand with the real writer and library (what a
killed run leaves on disk), so each window is covered deterministically. Then a real batch
process is killed with SIGKILL, twice, and resumed in a fresh process. The last tests hold a
job in a real second process (its claim, library/joblock.py) and check that nobody else
runs it, from the runner, the CLI and the window, until that process is killed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from smolvlm_desktop.batch import GROUP_SIZE, BatchRunner, BatchSettings, ImageDone, JobBusy, TokenDelta
from smolvlm_desktop.cli import EXIT_ERROR, EXIT_OK, main
from smolvlm_desktop.engine.types import GenerationSettings, Timings
from smolvlm_desktop.library import writers
from smolvlm_desktop.library.db import Library
from test_joblock import hold_in_another_process, kill

GEN = GenerationSettings(max_new_tokens=6)


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.new("RGB", (40 + 4 * i, 32), (20 * i % 256, 90, 255 - 20 * i % 256)).save(path)
        paths.append(path)
    return paths


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_like_the_killed_run(settings: BatchSettings, image: Path, text: str, folder: Path,
                              formats: tuple[str, ...] | None = None) -> None:
    """The files the killed run wrote for `image` before it died."""
    with writers.CaptionWriter(formats or settings.outputs, existing=settings.existing,
                               aggregate_dir=folder) as writer:
        writer.write(image, text, writers.CaptionMeta("tiny-smolvlm", settings.prompt,
                                                      Timings().as_dict()))


@pytest.fixture
def lib(tmp_path: Path):
    with Library(tmp_path / "library.sqlite3") as library:
        yield library


@pytest.mark.parametrize("written", ["all", "txt only", "none"])
def test_killed_between_writing_and_marking_done_finishes_with_the_same_text(
        tiny_model, lib: Library, tmp_path: Path, written: str) -> None:
    """Under "append", writing a second time would duplicate the caption: it must not."""
    images = make_images(tmp_path, 3)
    for path in images:
        path.with_suffix(".txt").write_text("mine", encoding="utf-8")
    settings = BatchSettings("Describe.", GEN, outputs=("txt", "jsonl"), existing="append")
    job = lib.create_job(settings.to_dict(), images)
    lib.stage_caption(job, images[0], "the staged caption", Timings(decode_ms=3))
    if written != "none":
        write_like_the_killed_run(settings, images[0], "the staged caption", tmp_path,
                                  ("txt", "jsonl") if written == "all" else ("txt",))

    events: list = []
    summary = BatchRunner(tiny_model, settings, library=lib, on_event=events.append).run(
        [], job_id=job)

    assert summary.done == 3 and summary.failed == []
    assert images[0].with_suffix(".txt").read_text(encoding="utf-8") == "mine\nthe staged caption"
    assert not [e for e in events if isinstance(e, TokenDelta) and e.path == images[0]]
    recovered = [e for e in events if isinstance(e, ImageDone) and e.path == images[0]]
    assert recovered[0].text == "the staged caption" and recovered[0].timings.decode_ms == 3
    rows = {r["file_name"]: r["text"] for r in jsonl_rows(tmp_path / "metadata.jsonl")}
    assert rows["img00.png"] == "the staged caption" and len(rows) == 3
    for path in images[1:]:
        caption = lib.job_item(job, path).caption
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == f"mine\n{caption}"
    assert [c.text for c in lib.captions_for(images[0])] == ["the staged caption"]


def test_jsonl_and_csv_rows_lost_with_the_process_are_restored(tiny_model, lib: Library,
                                                               tmp_path: Path) -> None:
    """The writer saves jsonl/csv every few seconds: a kill can lose rows of done images."""
    images = make_images(tmp_path, 4)
    settings = BatchSettings("Describe.", GEN, outputs=("txt", "jsonl", "csv"), existing="overwrite")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "img01.png", "text": "an old caption"}) + "\n", encoding="utf-8")
    job = lib.create_job(settings.to_dict(), images)
    for path in images[:2]:  # done, .txt written and synced, rows still in the dead process
        write_like_the_killed_run(settings, path, f"caption of {path.name}", tmp_path, ("txt",))
        lib.mark_done(job, path, f"caption of {path.name}", None, model="tiny", prompt="Describe.")

    summary = BatchRunner(tiny_model, settings, library=lib).run([], job_id=job)

    assert summary.done == 2 and summary.failed == []
    for rows in (jsonl_rows(tmp_path / "metadata.jsonl"), csv_rows(tmp_path / "captions.csv")):
        texts = {r["file_name"]: r["text"] for r in rows}
        assert len(rows) == 4 and sorted(texts) == [p.name for p in images]
        assert texts["img00.png"] == "caption of img00.png"
        assert texts["img01.png"] == "caption of img01.png"  # the overwrite that was lost
        assert texts["img02.png"] == lib.job_item(job, images[2]).caption


# --- a real SIGKILL --------------------------------------------------------------------------

CHILD = r"""
import os, sys, time
from pathlib import Path
from smolvlm_desktop.batch import BatchRunner, BatchSettings, TokenDelta
from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import GenerationSettings
from smolvlm_desktop.library import writers
from smolvlm_desktop.library.db import Library
from smolvlm_desktop.paths import demo_model_dir

library_path, folder, stall = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
images = sorted(folder.glob("*.png"))
marker = folder.parent / "stalled"

def hang():
    marker.write_text(stall)
    while True:
        time.sleep(1)

if stall.startswith("write:"):  # hang right after image N's files are written, before it is marked done
    target = images[int(stall[6:])]
    original = writers.CaptionWriter.write
    def write(self, image, text, meta=None):
        files = original(self, image, text, meta)
        if Path(image) == target:
            hang()
        return files
    writers.CaptionWriter.write = write

def on_event(event):
    if stall.startswith("token:") and isinstance(event, TokenDelta) \
            and event.path == images[int(stall[6:])]:
        hang()  # in the middle of generating image N

model = VisionLanguageModel.load(demo_model_dir(), variant="fp32", provider="cpu", threads=1)
with Library(library_path) as library:
    job = library.latest_unfinished_job()
    if job is None:
        settings = BatchSettings("Describe.", GenerationSettings(max_new_tokens=8),
                                 outputs=("txt", "jsonl", "csv"), existing="append")
        summary = BatchRunner(model, settings, library=library, on_event=on_event).run(images)
    else:
        settings = BatchSettings.from_dict(job.settings)
        summary = BatchRunner(model, settings, library=library, on_event=on_event).run(
            [], job_id=job.id)
print(f"done={summary.done} failed={summary.failed}")
"""


def start_child(library: Path, folder: Path, stall: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(library), str(folder), stall],
                                stdout=out, stderr=subprocess.STDOUT)


def done_count(library: Path) -> int:
    """Images done so far in the (one) job, which the running child holds: so not
    latest_unfinished_job, which leaves out jobs another process is running."""
    with Library(library) as lib:
        jobs = lib.list_jobs()
        return jobs[0].counts["done"] if jobs else 0


def kill_when_stalled(child: subprocess.Popen, library: Path, marker: Path, at_least: int,
                      log: Path) -> None:
    """Poll the library until `at_least` images are done and the child hangs; then kill -9."""
    deadline = time.monotonic() + 120
    try:
        while not (marker.exists() and done_count(library) >= at_least):
            assert child.poll() is None, f"the batch ended before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    except BaseException:
        child.kill()
        child.wait(30)
        raise
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    marker.unlink()


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_sigkill_twice_then_resume_captions_every_image_exactly_once(tmp_path: Path) -> None:
    folder, library, log = tmp_path / "photos", tmp_path / "library.sqlite3", tmp_path / "child.log"
    marker = tmp_path / "stalled"
    images = make_images(folder, 12)
    for path in images[::3]:
        path.with_suffix(".txt").write_text("mine", encoding="utf-8")  # "append" keeps these

    # 1: killed after image 5's files are written, before it is marked done
    kill_when_stalled(start_child(library, folder, "write:4", log), library, marker, 4, log)
    with Library(library) as lib:
        job = lib.latest_unfinished_job()
        assert job.counts["done"] == 4 and lib.job_item(job.id, images[4]).caption
    # 2: the resumed run is killed in the middle of generating image 9. Image 5 was finished by
    # the recovery; the rest decode in groups of GROUP_SIZE, so the group holding image 9 is
    # in flight and only the groups before it are done.
    done_before = 5 + (8 - 5) // GROUP_SIZE * GROUP_SIZE
    kill_when_stalled(start_child(library, folder, "token:8", log), library, marker, done_before, log)
    # 3: resumed to the end
    child = start_child(library, folder, "none", log)
    assert child.wait(120) == 0, log.read_text()

    with Library(library) as lib:
        job = lib.job(job.id)
        assert job.state == "finished" and job.counts["done"] == 12 and job.counts["total"] == 12
        captions = {item.path.name: item.caption for item in lib.job_items(job.id)}
        for path in images:
            assert [c.text for c in lib.captions_for(path)] == [captions[path.name]]
    for i, path in enumerate(images):
        expected = captions[path.name] if i % 3 else f"mine\n{captions[path.name]}"
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == expected, path.name
    for rows in (jsonl_rows(folder / "metadata.jsonl"), csv_rows(folder / "captions.csv")):
        assert sorted(r["file_name"] for r in rows) == [p.name for p in images]
        assert all(r["text"] == captions[r["file_name"]] for r in rows)
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary files from the killed writes


# --- a job another process is running ------------------------------------------------------


def busy(job_id: int) -> str:
    return f"job {job_id} is being run by another SmolVLM Desktop process"


def written(folder: Path) -> list[str]:
    """Every caption output in the folder (the images themselves left out)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".png")


def test_a_job_another_process_runs_is_not_resumed_and_nothing_is_written(
        tiny_model, lib: Library, tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", 3)
    settings = BatchSettings("Describe.", GEN, outputs=("txt", "jsonl"))
    job = lib.create_job(settings.to_dict(), images)
    lib.stage_caption(job, images[0], "staged before a crash", None)  # recovery would write it
    lib.finish_job(job, "cancelled")
    events: list = []
    holder = hold_in_another_process(lib.path, job)
    try:
        assert lib.latest_unfinished_job() is None, "a job being run is not offered to resume"
        with pytest.raises(JobBusy, match=busy(job)):
            BatchRunner(tiny_model, settings, library=lib, on_event=events.append).run(
                [], job_id=job)
    finally:
        kill(holder)
    assert events == [] and written(tmp_path / "photos") == []
    assert lib.job(job).state == "cancelled", "the job's state was not touched"
    assert [it.state for it in lib.job_items(job)] == ["pending"] * 3

    assert lib.latest_unfinished_job().id == job  # the kill gave the job back
    summary = BatchRunner(tiny_model, settings, library=lib).run([], job_id=job)
    assert summary.done == 3 and lib.job(job).state == "finished"
    assert images[0].with_suffix(".txt").read_text(encoding="utf-8") == "staged before a crash"


def test_the_very_same_new_batch_is_refused_while_another_process_runs_it(
        tiny_model, lib: Library, tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", 2)
    settings = BatchSettings("Describe.", GEN)
    job = lib.create_job({**settings.to_dict(), "model": tiny_model.info.name}, images)
    holder = hold_in_another_process(lib.path, job)
    try:
        with pytest.raises(JobBusy, match=busy(job)):
            BatchRunner(tiny_model, settings, library=lib).run(images)
    finally:
        kill(holder)
    assert [j.id for j in lib.list_jobs()] == [job], "no second job was created"
    assert written(tmp_path / "photos") == []
    assert BatchRunner(tiny_model, settings, library=lib).run(images).done == 2


def test_a_batch_writing_the_same_caption_files_as_a_running_one_waits_for_it(
        tiny_model, lib: Library, tmp_path: Path) -> None:
    """Another process runs a job that writes .txt captions for some of these images: a new
    batch that would write .txt files for them too is refused before anything is written
    (its skip check would race the other run's writes), and so is resuming one. A batch that
    writes other files for the same images goes ahead."""
    images = make_images(tmp_path / "photos", 3)
    running = lib.create_job(BatchSettings("Describe.", GEN, outputs=("txt",)).to_dict(), images[:2])
    mine = BatchSettings("List the colours.", GEN, outputs=("txt", "json"))
    earlier = lib.create_job(mine.to_dict(), images[1:])
    lib.finish_job(earlier, "cancelled")
    holder = hold_in_another_process(lib.path, running)
    try:
        clash = f"job {running}, running in another SmolVLM Desktop process, is writing captions for 1 of"
        with pytest.raises(JobBusy, match=clash):
            BatchRunner(tiny_model, mine, library=lib).run(images[1:])
        with pytest.raises(JobBusy, match=clash):
            BatchRunner(tiny_model, mine, library=lib).run([], job_id=earlier)
        assert written(tmp_path / "photos") == []
        assert [j.id for j in lib.list_jobs()] == [earlier, running], "no job was created"
        assert not lib.job_claimed(earlier), "the refused resume gave its claim back"
        other_files = BatchSettings("List the colours.", GEN, outputs=("json",))
        assert BatchRunner(tiny_model, other_files, library=lib).run(images).done == 3
    finally:
        kill(holder)
    assert BatchRunner(tiny_model, mine, library=lib).run([], job_id=earlier).done == 2


def test_a_run_holds_its_job_from_creation_to_the_end(tiny_model, lib: Library,
                                                      tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", 2)
    claimed: list[bool] = []

    def on_event(event: object) -> None:
        if isinstance(event, ImageDone):
            claimed.append(lib.job_claimed(lib.list_jobs()[0].id))

    summary = BatchRunner(tiny_model, BatchSettings("Describe.", GEN), library=lib,
                          on_event=on_event).run(images)
    assert claimed == [True, True] and not lib.job_claimed(summary.job_id)

    def refuse(job_id: int) -> None:
        raise JobBusy(job_id)

    with pytest.raises(JobBusy):
        lib.create_job({"prompt": "x"}, images, on_created=refuse)
    assert len(lib.list_jobs()) == 1, "a job whose claim failed is not created"


MODEL = ["--model", "demo", "--threads", "1"]
FAST = [*MODEL, "--max-new-tokens", "4"]


def test_cli_jobs_resume_refuses_a_job_another_process_runs(tmp_path: Path, capsys) -> None:
    images = make_images(tmp_path / "photos", 2)
    with Library() as library:
        job = library.create_job(BatchSettings("Describe.", GEN).to_dict(), images)
        holder = hold_in_another_process(library.path, job)
    try:
        assert main(["jobs"]) == EXIT_OK
        assert f"#{job}  running " in capsys.readouterr().out  # a live process runs it
        assert main(["jobs", "resume", str(job), *MODEL]) == EXIT_ERROR
        out, err = capsys.readouterr()
    finally:
        kill(holder)
    assert out == "" and err == f"smolvlm-desktop: error: {busy(job)}; wait for it to end (or stop " \
                                "it there), then try again\n"
    assert written(tmp_path / "photos") == []
    assert main(["jobs", "resume", str(job), *MODEL]) == EXIT_OK
    capsys.readouterr()
    assert written(tmp_path / "photos") == ["img00.txt", "img01.txt"]


def test_cli_the_same_command_twice_refuses_instead_of_a_second_job(tmp_path: Path,
                                                                   capsys) -> None:
    images = make_images(tmp_path / "photos", 3)
    command = ["caption", str(tmp_path / "photos"), "--write", "txt", *FAST]
    assert main(command) == EXIT_OK
    capsys.readouterr()
    with Library() as library:  # make it the unfinished job a killed run leaves
        (job,) = library.list_jobs()
        with library._lock:
            library._conn.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (job.id,))
            library._conn.execute("UPDATE job_items SET state = 'pending' WHERE job_id = ? "
                                  "AND path = ?", (job.id, str(images[2].resolve())))
    images[2].with_suffix(".txt").unlink()
    holder = hold_in_another_process(Library().path, job.id)  # the same command, running now
    try:
        assert main(command) == EXIT_ERROR
        err = capsys.readouterr().err
    finally:
        kill(holder)
    assert err.startswith(f"smolvlm-desktop: error: {busy(job.id)}") and err.count("\n") == 1
    assert not images[2].with_suffix(".txt").exists()
    with Library() as library:
        assert [j.id for j in library.list_jobs()] == [job.id], "no second job was started"

    assert main(command) == EXIT_OK  # that process is gone: the same command finishes the job
    assert f"resuming job #{job.id}" in capsys.readouterr().err
    assert images[2].with_suffix(".txt").exists()


@pytest.mark.gui
def test_the_window_shows_why_it_does_not_resume_a_job_another_process_runs(
        qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.settings import Settings
    from ui_helpers import TIMEOUT_MS, open_window

    images = make_images(tmp_path / "photos", 2)
    with Library() as library:
        job = library.create_job(BatchSettings("Describe.", GEN, outputs=("caption",)).to_dict(),
                                 images)
    window = open_window(qtbot, Settings(max_new_tokens=4, variant="fp32", provider="cpu",
                                         threads=1, idle_unload_minutes=0))
    setup = window.batch_panel.setup
    qtbot.waitUntil(lambda: not setup.resume_bar.isHidden(), timeout=TIMEOUT_MS)
    holder = hold_in_another_process(Library().path, job)  # the CLI started it meanwhile
    try:
        setup.resume_btn.click()
        qtbot.waitUntil(lambda: window.batch.job is None, timeout=TIMEOUT_MS)
        assert window.batch_panel.currentWidget() is setup
        assert busy(job) in setup.preview.toPlainText()
        assert busy(job) in window.status.currentMessage()
        qtbot.waitUntil(lambda: setup.resume_bar.isHidden(), timeout=TIMEOUT_MS)
        window.check_unfinished_batch()  # looked at again: still not offered while it runs
        qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT_MS)
        qtbot.wait(200)
        assert setup.resume_bar.isHidden()
    finally:
        kill(holder)
    assert written(tmp_path / "photos") == []
    window.check_unfinished_batch()
    qtbot.waitUntil(lambda: not setup.resume_bar.isHidden(), timeout=TIMEOUT_MS)
    setup.resume_btn.click()
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is window.batch_panel.summary,
                    timeout=TIMEOUT_MS)
    assert "Finished: 2 captioned" in window.batch_panel.summary.title.text()
    assert written(tmp_path / "photos") == ["img00.caption", "img01.caption"]
