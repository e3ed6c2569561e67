"""The CLI's file-writing and library commands, end to end on the tiny model and a real SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop import paths
from smolvlm_desktop.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from test_cli_usage import read_terminal

FAST = ["--model", "demo", "--max-new-tokens", "4", "--threads", "1"]


def photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def test_write_txt_then_skip_existing_then_overwrite(tmp_path: Path, capsys) -> None:
    images = photos(tmp_path / "set", 2)
    (tmp_path / "set" / "img0.txt").write_text("my own caption", encoding="utf-8")
    assert main(["caption", str(tmp_path / "set"), "--write", "txt", "--json", *FAST]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["img0.png"]["skipped"] and by_name["img0.png"]["text"] is None
    assert by_name["img1.png"]["ok"] and by_name["img1.png"]["token_ids"]
    assert (tmp_path / "set" / "img0.txt").read_text(encoding="utf-8") == "my own caption"
    assert (tmp_path / "set" / "img1.txt").read_text(encoding="utf-8") == by_name["img1.png"]["text"]

    assert main(["caption", str(images[0]), "--write", "txt", "--overwrite", *FAST]) == EXIT_OK
    assert (tmp_path / "set" / "img0.txt").read_text(encoding="utf-8") != "my own caption"


def test_jsonl_and_csv_one_row_per_image(tmp_path: Path, capsys) -> None:
    photos(tmp_path / "set", 3)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["caption", str(tmp_path / "set"), "--write", "jsonl", "--write", "csv",
                 "--output-dir", str(out), *FAST])
    capsys.readouterr()
    assert code == EXIT_OK
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["file_name"] for r in rows) == ["../set/img0.png", "../set/img1.png",
                                                     "../set/img2.png"]
    assert len((out / "captions.csv").read_text().strip().splitlines()) == 4  # header + 3


def test_hostile_file_in_a_batch_is_reported_and_the_rest_written(tmp_path: Path, capsys) -> None:
    photos(tmp_path / "set", 2)
    (tmp_path / "set" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code = main(["caption", str(tmp_path / "set"), "--write", "txt", *FAST])
    err = capsys.readouterr().err
    assert code == EXIT_SOME_FAILED
    assert "broken.jpg" in err and "Traceback" not in err
    assert (tmp_path / "set" / "img0.txt").exists() and (tmp_path / "set" / "img1.txt").exists()
    assert not (tmp_path / "set" / "broken.txt").exists()


def test_captions_are_searchable_and_forgettable(tmp_path: Path, capsys) -> None:
    images = photos(tmp_path / "set", 2)
    assert main(["caption", *map(str, images), "--json", *FAST]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    word = next(w for r in rows for w in r["text"].split() if w.isalpha() and len(w) > 2)
    assert main(["search", word, "--json"]) == EXIT_OK
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits and all(word.lower() in h["text"].lower() for h in hits)

    assert main(["library", "forget", str(tmp_path / "set")]) == EXIT_OK
    assert "erased 2 images" in capsys.readouterr().out
    assert main(["search", word, "--json"]) == EXIT_OK
    assert capsys.readouterr().out == ""
    with sqlite3.connect(paths.library_path()) as db:
        assert db.execute("SELECT count(*) FROM captions").fetchone()[0] == 0


def test_no_library_leaves_no_trace(tmp_path: Path, capsys) -> None:
    images = photos(tmp_path / "set", 1)
    assert main(["caption", str(images[0]), "--no-library", *FAST]) == EXIT_OK
    capsys.readouterr()
    assert not paths.library_path().exists()


def test_forget_all_needs_a_yes_without_a_terminal(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    try:
        assert main(["library", "forget", "--all"]) != EXIT_OK
    finally:
        import sys
        sys.stdin.close()
    assert "nothing erased" in capsys.readouterr().out
    assert main(["library", "forget"]) == EXIT_USAGE


def test_jobs_list_and_the_same_command_resumes_an_unfinished_job(tmp_path: Path, capsys) -> None:
    from smolvlm_desktop.library.db import Library

    images = photos(tmp_path / "set", 3)
    args = ["caption", str(tmp_path / "set"), "--write", "txt", *FAST]
    assert main(args) == EXIT_OK
    capsys.readouterr()
    # Pretend the run was killed after the first image: a caption file and a pending item lost.
    with Library() as library:
        job = library.list_jobs()[0]
        with library._lock:  # the test reaches in to fake the crash state
            library._conn.execute("UPDATE jobs SET state='running', finished_at=NULL WHERE id=?", (job.id,))
            library._conn.execute("UPDATE job_items SET state='pending', caption=NULL WHERE job_id=? "
                                  "AND path=?", (job.id, str(images[2].resolve())))
    images[2].with_suffix(".txt").unlink()

    assert main(["jobs"]) == EXIT_OK
    assert "interrupted" in capsys.readouterr().out  # its process is gone: not "running"
    assert main(args) == EXIT_OK
    err = capsys.readouterr().err
    assert f"resuming job #{job.id}" in err
    assert images[2].with_suffix(".txt").exists()
    with Library() as library:
        assert len(library.list_jobs()) == 1
        assert library.job(job.id).state == "finished"


def test_embed_metadata_writes_xmp_iptc_and_exif_without_touching_pixels(tmp_path: Path,
                                                                           capsys) -> None:
    pyexiv2 = pytest.importorskip("pyexiv2")
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(image, quality=92)
    with Image.open(image) as before:
        pixels = before.tobytes()
    code = main(["caption", str(image), "--write", "txt", "--embed-metadata", "--json", *FAST])
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == EXIT_OK and row["ok"]
    with pyexiv2.Image(str(image)) as handle:
        assert handle.read_xmp()["Xmp.dc.description"] == {'lang="x-default"': row["text"]}
        assert handle.read_iptc()["Iptc.Application2.Caption"] == row["text"]
        assert handle.read_exif()["Exif.Image.ImageDescription"] == row["text"]
    with Image.open(image) as after:
        assert after.tobytes() == pixels


def sign_in_the_library(tmp_path: Path) -> None:
    from smolvlm_desktop.library.db import Library

    with Library() as library:
        library.record_caption(tmp_path / "sign.png", "a sign reading [EXIT] above a door",
                               "SmolVLM-256M", "Describe.")


@pytest.mark.parametrize("query", ["door", "exit"])
def test_search_piped_prints_the_caption_text_exactly_without_marks(tmp_path: Path, capsys,
                                                                     query: str) -> None:
    sign_in_the_library(tmp_path)
    assert main(["search", query]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == f"{tmp_path / 'sign.png'}\n    a sign reading [EXIT] above a door\n"


def search_in_a_terminal(query: str, **env: str) -> str:
    """`smolvlm-desktop search QUERY` with its stdout on a real pseudo-terminal."""
    import pty

    master, slave = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    child = subprocess.Popen([sys.executable, "-m", "smolvlm_desktop", "search", query],
                             stdout=slave, stderr=subprocess.PIPE,
                             env={**environ, "TERM": "xterm", **env})
    os.close(slave)
    shown = read_terminal(master)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()
    return shown.decode("utf-8")


@pytest.mark.skipif(os.name == "nt", reason="pseudo-terminals are POSIX")
def test_search_in_a_terminal_shows_only_the_match_in_bold(tmp_path: Path) -> None:
    sign_in_the_library(tmp_path)
    assert "a sign reading [EXIT] above a \x1b[1mdoor\x1b[0m\r\n" in search_in_a_terminal("door")
    assert "a sign reading [\x1b[1mEXIT\x1b[0m] above a door" in search_in_a_terminal("exit")
    assert "a sign reading [EXIT] above a door\r\n" in search_in_a_terminal("door", NO_COLOR="1")
