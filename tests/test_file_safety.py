"""Issue 12's caption-file defects, each as it was found: a test that failed before its fix.

Real files in tmp_path, the real CaptionWriter, and the real CLI on the demo model for the
cases that were found through it. Runs as root in CI, where chmod blocks nothing, so the
"read-only caption" case is about being told, not about being stopped.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from smolvlm_desktop.cli import main
from smolvlm_desktop.library.atomic import OutputError, atomic_write_text
from smolvlm_desktop.library.writers import CaptionMeta, CaptionWriter, caption_exists

META = CaptionMeta(model="tiny", prompt="Describe.")
REPO = Path(__file__).resolve().parents[1]


def make_image(path: Path, colour=(200, 80, 40)) -> Path:
    Image.new("RGB", (48, 40), colour).save(path)
    return path


# --- 1. links are never written through ---------------------------------------------------------

def test_a_symlinked_sidecar_with_overwrite_never_destroys_the_photo_it_points_at(tmp_path: Path,
                                                                                 capsys):
    """img0.txt -> img1.jpg and `--overwrite` wrote the caption into img1.jpg."""
    make_image(tmp_path / "img0.jpg")
    photo = make_image(tmp_path / "img1.jpg", (10, 200, 30))
    before = photo.read_bytes()
    (tmp_path / "img0.txt").symlink_to(photo)
    code = main(["caption", str(tmp_path), "--model", "demo", "--write", "txt", "--overwrite",
                 "--max-new-tokens", "4", "--no-library", "--json"])
    assert photo.read_bytes() == before
    assert (tmp_path / "img0.txt").is_symlink()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = [r for r in rows if not r["ok"]]
    assert [Path(r["path"]).name for r in failed] == ["img0.jpg"]
    assert "link" in failed[0]["error"]
    assert code == 4
    assert (tmp_path / "img1.txt").is_file()  # the batch went on


@pytest.mark.parametrize("fmt,name", [("txt", "a.txt"), ("caption", "a.caption"),
                                      ("json", "a.json"), ("xmp", "a.png.xmp"),
                                      ("jsonl", "metadata.jsonl"), ("csv", "captions.csv")])
def test_no_format_writes_through_a_link(tmp_path: Path, fmt: str, name: str):
    victim = tmp_path / "victim.dat"  # e.g. another dataset's table: readable, never written
    victim.write_bytes(b"file_name,text\nx.png,precious\n")
    image = make_image(tmp_path / "a.png")
    (tmp_path / name).symlink_to(victim)
    with pytest.raises(OutputError, match="link"):
        with CaptionWriter([fmt], existing="overwrite", flush_seconds=0) as writer:
            writer.write(image, "a caption", META)
    assert victim.read_bytes() == b"file_name,text\nx.png,precious\n"
    assert (tmp_path / name).is_symlink()


def test_atomic_write_refuses_a_link_and_a_folder(tmp_path: Path):
    (tmp_path / "real").write_text("old")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(OutputError, match="symbolic link"):
        atomic_write_text(tmp_path / "link", "new")
    with pytest.raises(OutputError, match="not a regular file"):
        atomic_write_text(tmp_path / "folder.txt", "new")
    assert (tmp_path / "real").read_text() == "old"


def test_a_folder_named_like_a_caption_is_reported_as_such(tmp_path: Path):
    """A directory img3.txt was reported as 'a caption already exists' (item 15)."""
    image = make_image(tmp_path / "img3.png")
    (tmp_path / "img3.txt").mkdir()
    assert not caption_exists(image, ["txt"])
    with CaptionWriter(["txt"]) as writer:
        assert not writer.has_caption(image)
        with pytest.raises(OutputError, match="not a regular file"):
            writer.write(image, "a caption", META)


def test_overwriting_a_read_only_caption_says_so(tmp_path: Path):
    image = make_image(tmp_path / "a.png")
    caption = tmp_path / "a.txt"
    caption.write_text("old")
    caption.chmod(0o444)
    with CaptionWriter(["txt"], existing="overwrite") as writer:
        assert writer.write(image, "new", META) == [caption]
        assert any("read-only" in note for note in writer.last_notes)
    assert caption.read_text() == "new"
    assert caption.stat().st_mode & 0o777 == 0o444


# --- 2. two batches, one output folder ---------------------------------------------------------

_WRITER_PROCESS = """
import sys
from pathlib import Path
from smolvlm_desktop.library.writers import CaptionWriter, CaptionMeta
folder, out, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with CaptionWriter(["jsonl", "csv"], aggregate_dir=out, flush_seconds=0) as writer:
    for i in range(60):
        writer.write(folder / f"{tag}{i:03d}.png", f"caption {tag}{i}", CaptionMeta(model="m"))
"""


def test_two_processes_writing_one_output_folder_lose_no_row(tmp_path: Path):
    """150 + 150 images with one --output-dir: metadata.jsonl kept one batch's rows only."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metadata.jsonl").write_text(json.dumps({"file_name": "mine.png", "text": "keep"}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER_PROCESS, str(tmp_path), str(out), tag],
                              env=env) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = (out / "metadata.jsonl").read_text().split("\n")
    names = sorted(json.loads(line)["file_name"] for line in lines if line)
    expected = sorted(["mine.png"] + [f"../{t}{i:03d}.png" for t in "ab" for i in range(60)])
    assert names == expected
    with open(out / "captions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 120


# --- 3. captions.csv keeps what the user wrote -------------------------------------------------

def test_csv_keeps_a_users_extra_cells_and_columns(tmp_path: Path):
    image = make_image(tmp_path / "new.png")
    table = tmp_path / "captions.csv"
    table.write_text("file_name,text,rating\nmine.jpg,hello,5,EXTRA1,EXTRA2\n", newline="")
    with CaptionWriter(["csv"], flush_seconds=0) as writer:
        writer.write(image, "a caption", META)
    with open(table, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:3] == ["file_name", "text", "rating"]
    mine = next(r for r in rows if r[0] == "mine.jpg")
    assert mine[1:3] == ["hello", "5"]
    assert mine[-2:] == ["EXTRA1", "EXTRA2"]


# --- 4. JSON Lines are split at \n only ---------------------------------------------------------

LINE_BREAKS = ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_metadata_jsonl_survives_every_line_breaking_code_point(tmp_path: Path, brk: str):
    image = make_image(tmp_path / f"odd{brk}name.png")
    for run in range(3):
        with CaptionWriter(["jsonl"], flush_seconds=0) as writer:
            if run:
                assert writer.has_caption(image), f"re-captioned on run {run + 1}"
            writer.write(image, f"text{brk}with a break", META)
        lines = (tmp_path / "metadata.jsonl").read_bytes().decode("utf-8").split("\n")
        rows = [json.loads(line) for line in lines if line]
        assert [r["file_name"] for r in rows] == [image.name]
    assert caption_exists(image, ["jsonl"])


# --- 5. the CSV-injection guard is undone when read back ---------------------------------------

@pytest.mark.parametrize("name", ["=sum.png", "@home.png", "+plus.png"])
def test_formula_like_names_are_found_again_and_not_duplicated(tmp_path: Path, name: str):
    image = make_image(tmp_path / name)
    for _ in range(3):
        with CaptionWriter(["csv"], flush_seconds=0) as writer:
            if not writer.has_caption(image):
                writer.write(image, "=1+1 caption", META)
    with open(tmp_path / "captions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file_name"] for r in rows] == ["'" + name]  # still guarded on disk
    assert rows[0]["text"] == "'=1+1 caption"
    assert caption_exists(image, ["csv"])


# --- 7 (writers' part). non-UTF-8 file names ---------------------------------------------------

@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="needs byte file names")
def test_a_non_utf8_name_does_not_break_the_aggregate_files(tmp_path: Path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/odd\xff.png"))
    make_image(odd)
    good = make_image(tmp_path / "good.png")
    for _ in range(2):
        with CaptionWriter(["jsonl", "csv", "json", "txt"], flush_seconds=0) as writer:
            for image in (odd, good):
                if not writer.has_caption(image):
                    writer.write(image, "a caption", META)
    text = (tmp_path / "metadata.jsonl").read_text(encoding="utf-8")
    names = [json.loads(line)["file_name"] for line in text.splitlines()]
    assert names == ["odd\\xff.png", "good.png"]
    assert json.loads(Path(os.fsdecode(bytes(tmp_path) + b"/odd\xff.json")).read_text())[
        "file_name"] == "odd\\xff.png"


# --- 10. names too long for a sidecar ----------------------------------------------------------

def test_a_255_byte_name_with_xmp_fails_that_image_only(tmp_path: Path, capsys):
    long_image = make_image(tmp_path / ("x" * 251 + ".png"))
    make_image(tmp_path / "short.png")
    for _ in range(2):  # and again: a rerun must not abort either
        code = main(["caption", str(tmp_path), "--model", "demo", "--write", "xmp",
                     "--max-new-tokens", "4", "--no-library", "--json"])
        out = capsys.readouterr().out
        rows = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
        assert code == 4
        assert not rows[long_image.name]["ok"] and "too long" in rows[long_image.name]["error"]
    assert (tmp_path / "short.png.xmp").is_file()


def test_the_temporary_name_is_never_what_is_too_long(tmp_path: Path):
    """NAME.txt fits in 255 bytes, but .NAME.txt.xxxxxxxx.tmp did not."""
    image = make_image(tmp_path / ("y" * 240 + ".png"))
    with CaptionWriter(["txt"]) as writer:
        writer.write(image, "fits", META)
    assert (tmp_path / ("y" * 240 + ".txt")).read_text() == "fits"


@pytest.mark.parametrize("fmt,name,content", [("csv", "captions.csv", b"name,text\nx,y\n"),
                                              ("jsonl", "metadata.jsonl", b"\xff\xfe not utf-8\n")])
def test_an_aggregate_that_cannot_be_read_fails_each_image_not_the_batch(tmp_path: Path, capsys,
                                                                          fmt, name, content):
    """A captions.csv without a file_name column aborted a default (skip) batch with a traceback."""
    for i in range(2):
        make_image(tmp_path / f"p{i}.png")
    (tmp_path / name).write_bytes(content)
    code = main(["caption", str(tmp_path), "--model", "demo", "--write", fmt,
                 "--max-new-tokens", "3", "--no-library", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 4 and len(rows) == 2 and not any(r["ok"] for r in rows)
    assert "left unchanged" in rows[0]["error"]
    assert (tmp_path / name).read_bytes() == content


@pytest.mark.parametrize("value", ["=sum", "@x", "'=quoted", "''=twice", "'plain", "plain"])
def test_every_csv_cell_reads_back_exactly_as_written(tmp_path: Path, value: str):
    image = make_image(tmp_path / f"{value}.png")
    with CaptionWriter(["csv"], flush_seconds=0) as writer:
        writer.write(image, value, META)
    with CaptionWriter(["csv"], flush_seconds=0) as writer:
        assert writer.has_caption(image)
        row = writer._aggregate_for("csv", image).rows[image.name]
    assert row["text"] == value and row["file_name"] == image.name
