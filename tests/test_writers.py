"""library/atomic.py and library/writers.py on real files in tmp_path.

Failures of the disk (full, read-only) cannot be produced here, and tests run as root where
chmod blocks nothing, so those are simulated by making os.replace / os.fsync / os.open raise
the OSError the kernel would; such tests say "simulated" in their names.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from smolvlm_desktop.library import atomic, writers
from smolvlm_desktop.library.atomic import OutputError, atomic_write_bytes, atomic_write_text
from smolvlm_desktop.library.discover import discover_images
from smolvlm_desktop.library.writers import (FORMATS, CaptionMeta, CaptionWriter, caption_exists,
                                             output_path)

META = CaptionMeta(model="tiny-smolvlm", prompt="Describe.", timings={"decode_ms": 12.5})
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
DC_DESCRIPTION = "{http://purl.org/dc/elements/1.1/}description"


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing after it runs, no except Exception catches it."""


def _hidden_temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def _fail_with(code: int):  # noqa: ANN202 - a tiny factory of raising stand-ins
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))
    return fail


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert _hidden_temps(tmp_path) == []


def test_atomic_write_does_not_translate_newlines(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.csv", "x\r\ny\n")
    assert (tmp_path / "a.csv").read_bytes() == b"x\r\ny\n"


def test_replacing_keeps_the_permission_bits(tmp_path: Path) -> None:
    target = tmp_path / "private.txt"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write_text(target, "new")
    assert target.stat().st_mode & 0o777 == 0o600


def test_new_file_gets_the_umask_default_not_a_private_temp_mode(tmp_path: Path) -> None:
    old_mask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(old_mask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640


def test_a_symlink_is_never_written_through(tmp_path: Path) -> None:
    """Issue 12: it used to write through the link (`img0.txt -> img1.jpg` destroyed a photo)."""
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"):
        atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "old"


@pytest.mark.parametrize(("patched", "code", "reason"), [
    ("replace", errno.ENOSPC, "the disk is full"),
    ("fsync", errno.EROFS, "the folder is on a read-only disk"),
    ("replace", errno.EACCES, "permission denied"),
    ("fsync", errno.EDQUOT, "the disk quota is exceeded"),
])
def test_failed_write_keeps_the_old_file_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   patched: str, code: int, reason: str) -> None:
    target = tmp_path / "caption.txt"
    target.write_text("the old caption")
    monkeypatch.setattr(atomic.os, patched, _fail_with(code))
    with pytest.raises(OutputError) as caught:
        atomic_write_text(target, "the new caption")
    assert str(caught.value) == f"could not write {target}: {reason}"
    assert caught.value.path == target and caught.value.reason == reason
    monkeypatch.undo()
    assert target.read_text() == "the old caption"
    assert _hidden_temps(tmp_path) == []


def test_read_only_folder_when_creating_the_temp_file_simulated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic.os, "open", _fail_with(errno.EROFS))
    with pytest.raises(OutputError, match="read-only disk"):
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_interrupt_mid_write_removes_the_temp_and_propagates_simulated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and _hidden_temps(tmp_path) == []


def test_missing_folder_and_unencodable_text_are_output_errors(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="the folder does not exist"):
        atomic_write_text(tmp_path / "no" / "such" / "a.txt", "x")
    with pytest.raises(OutputError, match="cannot be encoded as ascii"):
        atomic_write_text(tmp_path / "a.txt", "café", encoding="ascii")
    assert not (tmp_path / "a.txt").exists()


# --- reading captions back, format by format --------------------------------------------------


def read_caption(fmt: str, image: Path, folder: Path) -> str | None:
    """What a downstream tool would read as image's caption in fmt (None: none there)."""
    path = output_path(image, fmt, folder)
    if not path.exists():
        return None
    if fmt in ("txt", "caption"):
        return path.read_text(encoding="utf-8")
    if fmt == "json":
        return json.loads(path.read_text(encoding="utf-8"))["text"]
    if fmt == "xmp":
        root = ET.parse(path).getroot()
        items = [li for li in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")
                 if li.get(XML_LANG) == "x-default"]
        assert len(items) == 1
        return items[0].text
    rows = _aggregate_rows(fmt, path)
    key = image.relative_to(folder).as_posix()
    matches = [r for r in rows if r["file_name"] == key]
    assert len(matches) <= 1, "duplicate rows"
    return matches[0]["text"] if matches else None


def _aggregate_rows(fmt: str, path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return list(csv.DictReader(io.StringIO(text)))


def _image(folder: Path, name: str = "photo.jpg") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 not really decoded by the writers \xff\xd9")
    return path


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("policy", "expected"), [
    ("skip", "first caption"),
    ("overwrite", "second caption"),
    ("append", "first caption\nsecond caption"),
])
def test_each_format_under_each_existing_policy(tmp_path: Path, fmt: str, policy: str,
                                                expected: str) -> None:
    image = _image(tmp_path)
    original = image.read_bytes()
    with CaptionWriter([fmt], existing=policy, aggregate_dir=tmp_path) as writer:
        assert not writer.has_caption(image)
        assert writer.write(image, "first caption\n", META) == [output_path(image, fmt, tmp_path)]
    assert read_caption(fmt, image, tmp_path) == "first caption"
    assert caption_exists(image, [fmt], tmp_path)

    with CaptionWriter([fmt], existing=policy, aggregate_dir=tmp_path) as writer:
        assert writer.has_caption(image)
        written = writer.write(image, "second caption", META)
    assert written == ([] if policy == "skip" else [output_path(image, fmt, tmp_path)])
    assert read_caption(fmt, image, tmp_path) == expected
    assert image.read_bytes() == original  # the image itself is never touched
    assert _hidden_temps(tmp_path) == []


def test_file_names_follow_the_conventions(tmp_path: Path) -> None:
    image = _image(tmp_path, "IMG_0001.JPG")
    with CaptionWriter(FORMATS, aggregate_dir=tmp_path) as writer:
        written = writer.write(image, "x", META)
    assert sorted(p.name for p in written) == sorted([
        "IMG_0001.txt", "IMG_0001.caption", "IMG_0001.json", "IMG_0001.JPG.xmp",
        "metadata.jsonl", "captions.csv"])


def test_json_rows_carry_model_prompt_and_timings(tmp_path: Path) -> None:
    image = _image(tmp_path, "sub dir/ünï.png")
    with CaptionWriter(["jsonl", "csv", "json"], aggregate_dir=tmp_path) as writer:
        writer.write(image, "a caption", META)
    (row,) = _aggregate_rows("jsonl", tmp_path / "metadata.jsonl")
    assert row == {"file_name": "sub dir/ünï.png", "text": "a caption", "model": "tiny-smolvlm",
                   "prompt": "Describe.", "timings": {"decode_ms": 12.5}}
    (cells,) = _aggregate_rows("csv", tmp_path / "captions.csv")
    assert cells == {**row, "timings": '{"decode_ms": 12.5}'}
    sidecar = json.loads((tmp_path / "sub dir" / "ünï.json").read_text(encoding="utf-8"))
    assert sidecar == {**row, "file_name": "ünï.png"}


def test_engine_timings_are_accepted_as_they_come(tmp_path: Path) -> None:
    from smolvlm_desktop.engine.types import Timings

    image = _image(tmp_path)
    meta = CaptionMeta("m", "p", Timings(decode_ms=3.14159, new_tokens=7))
    with CaptionWriter(["jsonl"], aggregate_dir=tmp_path) as writer:
        writer.write(image, "x", meta)
    (row,) = _aggregate_rows("jsonl", tmp_path / "metadata.jsonl")
    assert row["timings"]["decode_ms"] == 3.14 and row["timings"]["new_tokens"] == 7


def test_csv_quotes_commas_quotes_and_newlines(tmp_path: Path) -> None:
    image = _image(tmp_path, "a,b.jpg")
    nasty = 'He said "hi", then\nleft; 1,2,3'
    with CaptionWriter(["csv"], aggregate_dir=tmp_path) as writer:
        writer.write(image, nasty, META)
    (row,) = _aggregate_rows("csv", tmp_path / "captions.csv")
    assert row["file_name"] == "a,b.jpg" and row["text"] == nasty


def test_without_aggregate_dir_each_folder_gets_its_own_file(tmp_path: Path) -> None:
    first, second = _image(tmp_path / "one"), _image(tmp_path / "two" / "deep")
    with CaptionWriter(["jsonl"]) as writer:
        writer.write(first, "1", META)
        writer.write(second, "2", META)
    assert read_caption("jsonl", first, first.parent) == "1"
    assert read_caption("jsonl", second, second.parent) == "2"
    assert _aggregate_rows("jsonl", second.parent / "metadata.jsonl")[0]["file_name"] == "photo.jpg"


def test_overwrite_replaces_the_row_in_place_without_duplicates(tmp_path: Path) -> None:
    images = [_image(tmp_path, f"{n}.jpg") for n in "abc"]
    with CaptionWriter(["jsonl"], aggregate_dir=tmp_path, flush_seconds=0) as writer:
        for image in images:
            writer.write(image, "old", META)
    with CaptionWriter(["jsonl"], existing="overwrite", aggregate_dir=tmp_path) as writer:
        writer.write(images[1], "new", META)
        writer.write(images[1], "newer", META)
    rows = _aggregate_rows("jsonl", tmp_path / "metadata.jsonl")
    assert [(r["file_name"], r["text"]) for r in rows] == [("a.jpg", "old"), ("b.jpg", "newer"),
                                                          ("c.jpg", "old")]


def test_foreign_lines_and_extra_keys_in_jsonl_are_kept(tmp_path: Path) -> None:
    image = _image(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "photo.jpg", "text": "old", "split": "train"}\n'
        'this line is not json\n'
        '{"no_file_name": 1}\n', encoding="utf-8")
    with CaptionWriter(["jsonl"], existing="overwrite", aggregate_dir=tmp_path) as writer:
        writer.write(image, "new", META)
    lines = (tmp_path / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["split"] == "train" and json.loads(lines[0])["text"] == "new"
    assert lines[1:] == ["this line is not json", '{"no_file_name": 1}']


def test_duplicate_rows_on_disk_are_merged_on_load(tmp_path: Path) -> None:
    image = _image(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "photo.jpg", "text": "one"}\n{"file_name": "photo.jpg", "text": "two"}\n')
    with CaptionWriter(["jsonl"], existing="append", aggregate_dir=tmp_path) as writer:
        writer.write(image, "three", META)
    assert read_caption("jsonl", image, tmp_path) == "two\nthree"


def test_csv_without_file_name_column_is_left_alone(tmp_path: Path) -> None:
    image = _image(tmp_path)
    foreign = "name,comment\nx,y\n"
    (tmp_path / "captions.csv").write_text(foreign)
    assert not caption_exists(image, ["csv"], tmp_path)
    with pytest.raises(OutputError, match="no file_name column; left unchanged"):
        CaptionWriter(["csv"], aggregate_dir=tmp_path).write(image, "x", META)
    assert (tmp_path / "captions.csv").read_text() == foreign


def test_csv_keeps_extra_columns_and_tolerates_a_bom(tmp_path: Path) -> None:
    image = _image(tmp_path)
    (tmp_path / "captions.csv").write_text("\ufefffile_name,text,rating\nphoto.jpg,old,5\n",
                                           encoding="utf-8")
    with CaptionWriter(["csv"], existing="overwrite", aggregate_dir=tmp_path) as writer:
        writer.write(image, "new", META)
    (row,) = _aggregate_rows("csv", tmp_path / "captions.csv")
    assert row["rating"] == "5" and row["text"] == "new" and row["model"] == "tiny-smolvlm"


def test_append_refuses_a_sidecar_that_is_not_utf8(tmp_path: Path) -> None:
    image = _image(tmp_path)
    (tmp_path / "photo.txt").write_bytes(b"caf\xe9")
    with pytest.raises(OutputError, match="not UTF-8 text; left unchanged"):
        CaptionWriter(["txt"], existing="append").write(image, "x", META)
    assert (tmp_path / "photo.txt").read_bytes() == b"caf\xe9"


def test_empty_sidecar_is_not_a_caption(tmp_path: Path) -> None:
    image = _image(tmp_path)
    (tmp_path / "photo.txt").write_text("")
    assert not caption_exists(image, ["txt"])
    assert CaptionWriter(["txt"]).write(image, "x", META) == [tmp_path / "photo.txt"]
    assert (tmp_path / "photo.txt").read_text() == "x"


def test_caption_exists_needs_every_format(tmp_path: Path) -> None:
    image = _image(tmp_path)
    (tmp_path / "photo.txt").write_text("old")
    assert caption_exists(image, ["txt"])
    assert not caption_exists(image, ["txt", "jsonl"], tmp_path)
    with CaptionWriter(["txt", "jsonl"], aggregate_dir=tmp_path) as writer:
        assert writer.write(image, "new", META) == [tmp_path / "metadata.jsonl"]  # txt skipped
    assert caption_exists(image, ["txt", "jsonl"], tmp_path)
    assert (tmp_path / "photo.txt").read_text() == "old"


def test_same_stem_images_do_not_share_a_sidecar(tmp_path: Path) -> None:
    jpg, png = _image(tmp_path, "photo.jpg"), _image(tmp_path, "photo.png")
    with CaptionWriter(["txt", "xmp"], existing="overwrite") as writer:
        writer.write(jpg, "from the jpg", META)
        with pytest.raises(OutputError, match="already holds the caption of photo.jpg") as caught:
            writer.write(png, "from the png", META)
    assert caught.value.written == [tmp_path / "photo.png.xmp"]  # type: ignore[attr-defined]
    assert (tmp_path / "photo.txt").read_text() == "from the jpg"


def test_unknown_format_or_policy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown caption format 'docx'"):
        CaptionWriter(["txt", "docx"])
    with pytest.raises(ValueError, match="existing must be one of"):
        CaptionWriter(["txt"], existing="merge")


def test_embedding_without_pyexiv2_says_what_is_missing_simulated_absent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """pyexiv2 is a test dependency, so its absence is simulated (`sys.modules[...] = None`)."""
    monkeypatch.setitem(__import__("sys").modules, "pyexiv2", None)
    with pytest.raises(OutputError, match="^embedding needs the optional 'pyexiv2' package"):
        CaptionWriter(["txt"], embed=True)


def test_embedding_with_pyexiv2_keeps_the_pixels(tmp_path: Path) -> None:
    """Runs where the optional pyexiv2 is installed (not in the default environment)."""
    pytest.importorskip("pyexiv2")
    from PIL import Image

    image = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 24), (10, 200, 30)).save(image, quality=90)
    with Image.open(image) as before:
        pixels = before.tobytes()
    with CaptionWriter([], embed=True, existing="append") as writer:
        assert not writer.has_caption(image)
        assert writer.write(image, "first", META) == [image]
        assert writer.has_caption(image)
        writer.write(image, "second", META)
    import pyexiv2  # type: ignore[import-not-found]

    with pyexiv2.Image(str(image)) as handle:
        assert handle.read_xmp()["Xmp.dc.description"] == {'lang="x-default"': "first\nsecond"}
        # IPTC and EXIF hold the same text (Metadata Working Group: keep the three consistent)
        assert handle.read_iptc()["Iptc.Application2.Caption"] == "first\nsecond"
        assert handle.read_exif()["Exif.Image.ImageDescription"] == "first\nsecond"
    with Image.open(image) as after:
        assert after.tobytes() == pixels


# --- XMP ---------------------------------------------------------------------------------------


def test_xmp_is_well_formed_with_text_escaped(tmp_path: Path) -> None:
    image = _image(tmp_path)
    text = 'A <b>bold</b> & "quoted" caption\x00\x07 with 日本'
    CaptionWriter(["xmp"]).write(image, text, META)
    raw = (tmp_path / "photo.jpg.xmp").read_text(encoding="utf-8")
    assert raw.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert "&lt;b&gt;" in raw and "&amp;" in raw
    assert read_caption("xmp", image, tmp_path) == 'A <b>bold</b> & "quoted" caption with 日本'


DARKTABLE_XMP = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    darktable:history_end="2">
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1"/>
    </rdf:Seq>
   </darktable:history>
   <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>
   {description}
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.mark.parametrize(("description", "policy", "expected"), [
    ("", "skip", "new"),  # no caption yet: added, under every policy
    ('<dc:description><rdf:Alt><rdf:li xml:lang="x-default">old</rdf:li>'
     '<rdf:li xml:lang="de">alt</rdf:li></rdf:Alt></dc:description>', "append", "old\nnew"),
    ('<dc:description><rdf:Alt><rdf:li xml:lang="x-default">old</rdf:li></rdf:Alt>'
     '</dc:description>', "overwrite", "new"),
])
def test_xmp_merge_keeps_everything_else(tmp_path: Path, description: str, policy: str,
                                         expected: str) -> None:
    image = _image(tmp_path)
    sidecar = tmp_path / "photo.jpg.xmp"
    sidecar.write_text(DARKTABLE_XMP.replace("{description}", description), encoding="utf-8")
    CaptionWriter(["xmp"], existing=policy).write(image, "new", META)
    raw = sidecar.read_text(encoding="utf-8")
    assert read_caption("xmp", image, tmp_path) == expected
    assert 'darktable:operation="exposure"' in raw and "darktable:history_end" in raw
    assert "<rdf:li>holiday</rdf:li>" in raw
    assert len(ET.parse(sidecar).getroot().findall(f".//{DC_DESCRIPTION}")) == 1
    if 'xml:lang="de"' in description:
        assert '<rdf:li xml:lang="de">alt</rdf:li>' in raw


def test_xmp_attribute_form_description_is_converted(tmp_path: Path) -> None:
    image = _image(tmp_path)
    sidecar = tmp_path / "photo.jpg.xmp"
    sidecar.write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
                       '1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:dc="http:'
                       '//purl.org/dc/elements/1.1/" dc:description="old"/></rdf:RDF></x:xmpmeta>')
    assert caption_exists(image, ["xmp"])
    CaptionWriter(["xmp"], existing="append").write(image, "new", META)
    assert read_caption("xmp", image, tmp_path) == "old\nnew"
    assert 'dc:description="' not in sidecar.read_text()


@pytest.mark.parametrize(("content", "reason"), [
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', "declares a DTD"),
    ("<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed></x:xmpmeta>", "not well-formed XML"),
    ("<html><body>not xmp</body></html>", "not XMP"),
])
def test_foreign_or_broken_xmp_is_left_unchanged(tmp_path: Path, content: str, reason: str) -> None:
    image = _image(tmp_path)
    sidecar = tmp_path / "photo.jpg.xmp"
    sidecar.write_text(content)
    with pytest.raises(OutputError, match=reason):
        CaptionWriter(["xmp"], existing="overwrite").write(image, "new", META)
    assert sidecar.read_text() == content


# --- jsonl/csv: throttling, failures and crashes ---------------------------------------------


def test_rows_are_held_until_flush_when_throttled(tmp_path: Path) -> None:
    first, second = _image(tmp_path, "1.jpg"), _image(tmp_path, "2.jpg")
    writer = CaptionWriter(["jsonl"], aggregate_dir=tmp_path, flush_seconds=3600)
    writer.write(first, "one", META)  # the first write saves at once: the file appears
    writer.write(second, "two", META)
    assert read_caption("jsonl", second, tmp_path) is None
    assert writer.has_caption(second)  # the writer knows, before the file does
    writer.flush()
    assert read_caption("jsonl", second, tmp_path) == "two"
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(first, "again", META)


def test_full_disk_during_flush_keeps_rows_for_the_next_flush_simulated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _image(tmp_path, "1.jpg"), _image(tmp_path, "2.jpg")
    writer = CaptionWriter(["jsonl", "txt"], aggregate_dir=tmp_path, flush_seconds=0)
    writer.write(first, "one", META)
    monkeypatch.setattr(atomic.os, "replace", _fail_with(errno.ENOSPC))
    with pytest.raises(OutputError, match="metadata.jsonl: the disk is full"):
        writer.write(second, "two", META)
    monkeypatch.undo()
    assert [r["text"] for r in _aggregate_rows("jsonl", tmp_path / "metadata.jsonl")] == ["one"]
    writer.close()
    assert [r["text"] for r in _aggregate_rows("jsonl", tmp_path / "metadata.jsonl")] == [
        "one", "two"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_aggregate_stays_valid_after_a_simulated_crash_between_write_and_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    images = [_image(tmp_path, f"{n}.jpg") for n in range(4)]
    writer = CaptionWriter([fmt], aggregate_dir=tmp_path, flush_seconds=0)
    for image in images[:3]:
        writer.write(image, f"caption {image.stem}", META)
    target = output_path(images[0], fmt, tmp_path)
    before = target.read_bytes()

    def die(*args: object) -> None:
        raise SimulatedCrash  # the temp file is complete; the rename never happens

    monkeypatch.setattr(atomic.os, "replace", die)
    with pytest.raises(SimulatedCrash):
        writer.write(images[3], "caption 3", META)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [r["text"] for r in _aggregate_rows(fmt, target)] == ["caption 0", "caption 1",
                                                                "caption 2"]
    # the next run picks up where the last complete file left off, without duplicates
    with CaptionWriter([fmt], aggregate_dir=tmp_path) as again:
        todo = [image for image in images if not again.has_caption(image)]
        assert todo == [images[3]]
        again.write(images[3], "caption 3", META)
    assert [r["file_name"] for r in _aggregate_rows(fmt, target)] == [
        "0.jpg", "1.jpg", "2.jpg", "3.jpg"]


def test_process_killed_before_rename_leaves_a_valid_file_and_a_hidden_temp(
        tmp_path: Path) -> None:
    """A real crash: a child process exits (os._exit, no cleanup at all) inside os.replace."""
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from smolvlm_desktop.library import atomic
        from smolvlm_desktop.library.writers import CaptionMeta, CaptionWriter
        folder = Path({str(tmp_path)!r})
        writer = CaptionWriter(["jsonl"], aggregate_dir=folder, flush_seconds=0)
        for n in range(3):
            (folder / f"{{n}}.jpg").write_bytes(b"x")
            writer.write(folder / f"{{n}}.jpg", f"caption {{n}}", CaptionMeta())
        atomic.os.replace = lambda *args: os._exit(17)
        (folder / "3.jpg").write_bytes(b"x")
        writer.write(folder / "3.jpg", "caption 3", CaptionMeta())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 17, done.stderr
    rows = _aggregate_rows("jsonl", tmp_path / "metadata.jsonl")
    assert [r["file_name"] for r in rows] == ["0.jpg", "1.jpg", "2.jpg"]
    (leftover,) = _hidden_temps(tmp_path)
    assert leftover.name.startswith(".smolvlm-")  # short: never longer than the target's name
    found, _ = discover_images([tmp_path])
    assert [p.name for p in found] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]


def test_settings_offer_exactly_the_writer_policies() -> None:
    from smolvlm_desktop import settings

    assert settings.EXISTING_POLICIES == writers.EXISTING_POLICIES


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(tmp_path) -> None:
    from smolvlm_desktop.library.writers import CaptionMeta, CaptionWriter

    image = tmp_path / "=cmd.png"
    image.write_bytes(b"")
    with CaptionWriter(["csv"], aggregate_dir=tmp_path) as writer:
        writer.write(image, '=HYPERLINK("http://example.invalid","x")', CaptionMeta("m", "p", {}))
    text = (tmp_path / "captions.csv").read_text(encoding="utf-8")
    assert "'=HYPERLINK" in text and "'=cmd.png" in text
    assert ',=' not in text and not text.splitlines()[1].startswith("=")
