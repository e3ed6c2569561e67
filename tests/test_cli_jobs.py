"""Job states and stops on the command line (issue 12 items 14-15, issue 11 "Command line"):
a job whose process is gone is shown interrupted, not running; `jobs resume` exits 4 while
images are still failed; Ctrl+C and SIGTERM save what is done and say how to go on; bad
numbers are usage errors. The real CLI on the demo model, real files and a real SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from smolvlm_desktop.library import writers
from smolvlm_desktop.library.db import Library

FAST = ["--model", "demo", "--max-new-tokens", "4", "--threads", "1"]
RESUME = ["--model", "demo", "--threads", "1"]  # the job keeps its own generation settings


def photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def jobs_json(capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["jobs", "--json"]) == EXIT_OK
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# --- item 15: numbers that are not numbers ------------------------------------------------


@pytest.mark.parametrize("option", [["--temperature", "nan"], ["--temperature", "inf"],
                                    ["--repetition-penalty", "nan"], ["--top-p", "nan"],
                                    ["--threads", "-3"], ["--threads", "0"]])
def test_bad_numbers_are_usage_errors(tmp_path: Path, capsys, option: list[str]) -> None:
    image = photos(tmp_path, 1)[0]
    args = ["caption", str(image), "--model", "demo", "--max-new-tokens", "4", *option]
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert option[0].lstrip("-").split("-")[0] in err.replace("_", "-") and "Traceback" not in err


# --- item 14: states and exit codes ---------------------------------------------------------


def test_a_finished_job_with_failed_images_is_shown_failed_and_resume_exits_4(
        tmp_path: Path, capsys) -> None:
    photos(tmp_path / "set", 2)
    (tmp_path / "set" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["caption", str(tmp_path / "set"), "--write", "txt", *FAST]) == EXIT_SOME_FAILED
    [job] = jobs_json(capsys)
    assert job["state"] == "failed" and job["counts"]["failed"] == 1
    assert main(["jobs", "resume", str(job["id"]), *RESUME]) == EXIT_SOME_FAILED
    assert "1 image failed" in capsys.readouterr().out


def test_a_resumed_job_that_still_has_a_failed_image_exits_4(tmp_path: Path, capsys) -> None:
    images = photos(tmp_path / "set", 3)
    assert main(["caption", str(tmp_path / "set"), "--write", "txt", *FAST]) == EXIT_OK
    with Library() as lib:  # as a run killed after one image failed and one was captioned
        job = lib.list_jobs()[0].id
        with lib._lock:
            lib._conn.execute("UPDATE jobs SET state='running', finished_at=NULL WHERE id=?", (job,))
            lib._conn.execute("UPDATE job_items SET state='failed', error='disk full' "
                              "WHERE job_id=? AND position=0", (job,))
            lib._conn.execute("UPDATE job_items SET state='pending', caption=NULL "
                              "WHERE job_id=? AND position=2", (job,))
    images[2].with_suffix(".txt").unlink()
    assert [j["state"] for j in jobs_json(capsys)] == ["interrupted"]
    assert main(["jobs", "resume", str(job), *RESUME]) == EXIT_SOME_FAILED
    assert images[2].with_suffix(".txt").exists()
    assert [j["state"] for j in jobs_json(capsys)] == ["failed"]


# --- issue 11: Ctrl+C and SIGTERM -------------------------------------------------------------


def test_ctrl_c_in_a_batch_keeps_what_is_done_and_says_how_to_resume(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    images = photos(tmp_path / "set", 6)
    original = writers.CaptionWriter.write

    def write(self, image, text, meta=None):  # Ctrl+C arrives as image 3's files are due
        if Path(image).name == images[3].name:
            raise KeyboardInterrupt
        return original(self, image, text, meta)

    monkeypatch.setattr(writers.CaptionWriter, "write", write)
    args = ["caption", str(tmp_path / "set"), "--write", "txt", "--write", "jsonl", *FAST]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted: run the same command again to resume" in err and "Traceback" not in err
    txt = sorted(p.with_suffix(".png").name for p in (tmp_path / "set").glob("*.txt"))
    rows = [json.loads(line)["file_name"]
            for line in (tmp_path / "set" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(rows) == txt and len(txt) == 3, "every finished caption is in metadata.jsonl"
    assert [j["state"] for j in jobs_json(capsys)] == ["interrupted"]

    monkeypatch.setattr(writers.CaptionWriter, "write", original)
    assert main(args) == EXIT_OK
    assert "resuming job" in capsys.readouterr().err
    assert [j["state"] for j in jobs_json(capsys)] == ["finished"]
    assert len((tmp_path / "set" / "metadata.jsonl").read_text().splitlines()) == 6


def test_ctrl_c_in_plain_mode_ends_the_half_printed_caption_line(
        tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch) -> None:
    from smolvlm_desktop.engine.conversation import Conversation

    images = photos(tmp_path, 2)
    real_stream = Conversation.stream  # what `caption` answers through (one per image)

    def stream(self, *args, **kwargs):  # the real stream, with Ctrl+C after its first tokens
        generation = real_stream(self, *args, **kwargs)
        for count, event in enumerate(generation):
            yield event
            if count == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(Conversation, "stream", stream)
    assert main(["caption", *map(str, images), *FAST, "--max-new-tokens", "8"]) == 130
    out, err = capfd.readouterr()
    assert out.startswith(f"{images[0]}: ") and out.endswith("\n") and out.count("\n") == 1
    assert "interrupted" in err


STALLING_CLI = """
import sys, time
from pathlib import Path
from smolvlm_desktop.library import writers
from smolvlm_desktop.cli import main

target, marker = sys.argv[1], Path(sys.argv[2])
original = writers.CaptionWriter.write

def write(self, image, text, meta=None):  # hang until killed when image `target` is due
    if Path(image).name == target:
        marker.write_text("stalled")
        while True:
            time.sleep(0.05)
    return original(self, image, text, meta)

writers.CaptionWriter.write = write
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM is POSIX")
def test_sigterm_saves_metadata_like_ctrl_c_and_the_job_is_interrupted(tmp_path: Path,
                                                                      capsys) -> None:
    images = photos(tmp_path / "set", 7)
    marker = tmp_path / "stalled"
    args = ["caption", str(tmp_path / "set"), "--write", "txt", "--write", "jsonl", *FAST]
    child = subprocess.Popen([sys.executable, "-c", STALLING_CLI, images[5].name, str(marker),
                              *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():  # waits for an event, not for a length of time
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "interrupted: run the same command again to resume" in err and "Traceback" not in err
    txt = sorted(p.with_suffix(".png").name for p in (tmp_path / "set").glob("*.txt"))
    rows = [json.loads(line)["file_name"]
            for line in (tmp_path / "set" / "metadata.jsonl").read_text().splitlines()]
    assert len(txt) == 5 and sorted(rows) == txt
    assert [j["state"] for j in jobs_json(capsys)] == ["interrupted"]
