"""Images captioned by a command-line batch are indexed for search by meaning afterwards (issue
16: "images that enter the library ... batch-captioned are embedded"), by `index`'s own code:
unchanged images skipped, an interrupted pass finished by the next run, never a batch failure,
nothing without the library. The real CLI on the tiny SmolVLM (--model demo) and the tiny
CLIP (SMOLVLM_EMBEDDING_MODEL=demo), real files and a real library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop import paths
from smolvlm_desktop.cli import EXIT_OK, main
from smolvlm_desktop.library import writers
from smolvlm_desktop.library.db import Library
from smolvlm_desktop.library.vectors import VectorStore

FAST = ["--model", "demo", "--max-new-tokens", "2", "--threads", "1"]
CLIP_KEY = "tiny-clip/16"


@pytest.fixture(autouse=True)
def search_by_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLVLM_EMBEDDING_MODEL", "demo")


def photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def indexed() -> set[str]:
    """Names of the images with a vector of the tiny CLIP in the library."""
    if not paths.library_path().exists():
        return set()
    with Library() as library:
        names, _ = VectorStore(library).matrix(CLIP_KEY)
    return {Path(p).name for p in names}


def test_a_batch_indexes_what_it_captioned_after_the_captions_and_skips_it_next_time(tmp_path, capsys):
    images = photos(tmp_path / "set", 5)
    (tmp_path / "set" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    command = ["caption", str(tmp_path / "set"), "--write", "txt", "--json", *FAST]
    assert main(command) == 4  # the broken image fails the batch, as before; it is not indexed
    out, err = capsys.readouterr()
    assert [json.loads(line)["ok"] for line in out.splitlines()].count(True) == 5  # stdout: the batch's alone
    assert "indexed 5 images for search by meaning with tiny-clip" in err
    assert indexed() == {p.name for p in images}
    assert main(command) == 4  # run again: captions skipped, images unchanged: nothing embedded
    assert "for search by meaning" not in capsys.readouterr().err
    Image.new("RGB", (30, 20), "red").save(images[1])  # edited since: embedded again
    assert main(command) == 4
    assert "indexed 1 images for search by meaning with tiny-clip, 4 unchanged" in capsys.readouterr().err


def test_no_library_no_index_or_no_embedding_model_means_no_pass(tmp_path, capsys, monkeypatch):
    photos(tmp_path / "set", 2)
    for extra in (["--no-library"], ["--no-index"]):
        assert main(["caption", str(tmp_path / "set"), "--write", "txt", "--overwrite", *FAST, *extra]) == EXIT_OK
        assert "search by meaning" not in capsys.readouterr().err and indexed() == set()
    monkeypatch.delenv("SMOLVLM_EMBEDDING_MODEL")  # and none installed: nothing said about it
    assert main(["caption", str(tmp_path / "set"), "--write", "txt", "--overwrite", *FAST]) == EXIT_OK
    assert "search by meaning" not in capsys.readouterr().err and indexed() == set()


def test_a_broken_embedding_model_is_a_note_never_a_failed_batch(tmp_path, capsys, monkeypatch):
    broken = tmp_path / "broken-clip"
    shutil.copytree(paths.demo_embedding_model_dir(), broken)
    (broken / "onnx" / "text_model_int8.onnx").write_bytes(b"not an onnx graph")
    monkeypatch.setenv("SMOLVLM_EMBEDDING_MODEL", str(broken))
    images = photos(tmp_path / "set", 2)
    assert main(["caption", str(tmp_path / "set"), "--write", "txt", *FAST]) == EXIT_OK
    err = capsys.readouterr().err
    assert "the captions are done, but indexing them for search by meaning failed" in err
    assert "Traceback" not in err and all(p.with_suffix(".txt").is_file() for p in images)


def test_ctrl_c_in_the_index_pass_keeps_the_batch_and_the_next_run_finishes_it(tmp_path, capsys, monkeypatch):
    images = photos(tmp_path / "set", 12)
    original = VectorStore.add_many
    calls = []

    def add_many(self, model, items):  # Ctrl+C as the second group of 8 is due
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, model, items)

    monkeypatch.setattr(VectorStore, "add_many", add_many)
    command = ["caption", str(tmp_path / "set"), "--write", "txt", *FAST]
    assert main(command) == EXIT_OK  # every caption was written: the batch succeeded
    assert "indexing for search by meaning stopped" in capsys.readouterr().err
    assert len(indexed()) == 8 and all(p.with_suffix(".txt").is_file() for p in images)
    monkeypatch.setattr(VectorStore, "add_many", original)
    assert main(command) == EXIT_OK
    assert "indexed 4 images for search by meaning with tiny-clip, 8 unchanged" in capsys.readouterr().err
    assert indexed() == {p.name for p in images}


def test_an_interrupted_batch_is_indexed_whole_when_resumed(tmp_path, capsys, monkeypatch):
    """Ctrl+C in the batch: no pass (the batch is not done). `jobs resume` finishes it and
    indexes every image of the job, those captioned before the interruption too."""
    images = photos(tmp_path / "set", 6)
    original = writers.CaptionWriter.write

    def write(self, image, text, meta=None):
        if Path(image).name == images[3].name:
            raise KeyboardInterrupt
        return original(self, image, text, meta)

    monkeypatch.setattr(writers.CaptionWriter, "write", write)
    assert main(["caption", str(tmp_path / "set"), "--write", "txt", *FAST]) == 130
    assert indexed() == set()
    monkeypatch.setattr(writers.CaptionWriter, "write", original)
    with Library() as library:
        job = library.list_jobs()[0].id
    capsys.readouterr()
    assert main(["jobs", "resume", str(job), "--model", "demo", "--threads", "1"]) == EXIT_OK
    assert "indexed 6 images for search by meaning" in capsys.readouterr().err
    assert indexed() == {p.name for p in images}
