"""`index` and `search` by meaning, end to end: the tiny CLIP (--embedding-model demo), real
image files, a real library file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop import paths
from smolvlm_desktop.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from smolvlm_desktop.engine.embeddings import EmbeddingModel
from smolvlm_desktop.library.db import Library
from smolvlm_desktop.library.vectors import VectorStore
from smolvlm_desktop.semantic import index_images

DEMO = ["--embedding-model", "demo", "--threads", "1"]


def photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_index_embeds_a_tree_skips_unchanged_files_and_reports_broken_ones(tmp_path, capsys):
    photos(tmp_path / "set", 3)
    photos(tmp_path / "set" / "sub", 2, seed=10)
    (tmp_path / "set" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    assert main(["index", str(tmp_path / "set"), "--recursive", *DEMO]) == EXIT_SOME_FAILED
    out, err = capsys.readouterr()
    assert "indexed 5 images with tiny-clip, 0 unchanged, 1 failed" in out
    assert "broken.jpg" in err and "random weights" in err
    assert main(["index", str(tmp_path / "set"), "--recursive", *DEMO]) == EXIT_OK
    assert "indexed 0 images with tiny-clip, 6 unchanged, 0 failed" in capsys.readouterr().out
    Image.new("RGB", (30, 30), "red").save(tmp_path / "set" / "img1.png")  # edited
    assert main(["index", str(tmp_path / "set"), *DEMO]) == EXIT_OK  # not recursive this time
    assert "indexed 1 images with tiny-clip, 3 unchanged, 0 failed" in capsys.readouterr().out


def test_a_cancelled_index_keeps_what_it_did_and_the_next_run_finishes(tmp_path):
    images = photos(tmp_path / "set", 20)
    model = EmbeddingModel.load(paths.demo_embedding_model_dir(), threads=1)
    cancel = threading.Event()

    def stop_after_first_batch(p):
        if p.done:
            cancel.set()

    with Library(paths.library_path()) as library:
        store = VectorStore(library)
        first = index_images(model, store, images, progress=stop_after_first_batch, cancel=cancel, batch=8)
        assert (first.done, first.total) == (8, 20) and store.count(model.key) == (8, 0)
        second = index_images(model, store, images)
        assert (second.done, second.skipped) == (12, 8) and store.count(model.key) == (20, 0)


def test_search_ranks_by_meaning_exactly_as_the_cosines_say(tmp_path, capsys):
    images = photos(tmp_path / "set", 6)
    assert main(["index", str(tmp_path / "set"), *DEMO]) == EXIT_OK
    capsys.readouterr()
    assert main(["search", "a whiteboard with a diagram", "--json", *DEMO]) == EXIT_OK
    rows = json_lines(capsys.readouterr().out)
    model = EmbeddingModel.load(paths.demo_embedding_model_dir(), threads=1)
    cosines = model.embed_files(images) @ model.embed_texts(["a whiteboard with a diagram"])[0]
    expected = [str(images[i].resolve()) for i in np.argsort(-cosines)]
    assert [r["path"] for r in rows] == expected
    assert [r["score"] for r in rows] == pytest.approx(sorted(cosines, reverse=True), abs=1e-3)
    assert all(r["by_meaning"] and not r["by_words"] for r in rows)


def test_search_combines_caption_words_with_meaning(tmp_path, capsys):
    images = photos(tmp_path / "set", 6)
    with Library(paths.library_path()) as library:
        library.record_caption(images[4], "a receipt from the corner shop", model="m", prompt="p")
    assert main(["index", str(tmp_path / "set"), *DEMO]) == EXIT_OK
    capsys.readouterr()
    assert main(["search", "receipt", "--json", "--limit", "3", *DEMO]) == EXIT_OK
    rows = json_lines(capsys.readouterr().out)
    assert len(rows) == 3
    assert rows[0]["path"] == str(images[4].resolve())  # found by words and by meaning: first
    assert rows[0]["by_words"] and rows[0]["by_meaning"] and "receipt" in rows[0]["text"]
    elsewhere = photos(tmp_path / "not-indexed", 1)[0]
    with Library(paths.library_path()) as library:
        library.record_caption(elsewhere, "another receipt", model="m", prompt="p")
    assert main(["search", "receipt", "--json", *DEMO]) == EXIT_OK
    by_path = {r["path"]: r for r in json_lines(capsys.readouterr().out)}
    words_only = by_path[str(elsewhere.resolve())]
    assert words_only["by_words"] and not words_only["by_meaning"] and words_only["score"] is None


def test_more_like_this_finds_a_resized_copy_first_and_never_the_image_itself(tmp_path, capsys):
    images = photos(tmp_path / "set", 6)
    original = Image.open(images[2])
    original.resize((160, 120), Image.Resampling.BICUBIC).save(tmp_path / "set" / "copy-of-2.png")
    assert main(["index", str(tmp_path / "set"), *DEMO]) == EXIT_OK
    capsys.readouterr()
    assert main(["search", "--image", str(images[2]), "--json", *DEMO]) == EXIT_OK
    rows = json_lines(capsys.readouterr().out)
    assert Path(rows[0]["path"]).name == "copy-of-2.png" and rows[0]["score"] > 0.9
    assert str(images[2].resolve()) not in [r["path"] for r in rows]
    assert main(["search", "--image", str(images[2]), *DEMO]) == EXIT_OK
    assert "copy-of-2.png" in capsys.readouterr().out.splitlines()[0]


def test_forgotten_and_deleted_images_are_not_found(tmp_path, capsys):
    images = photos(tmp_path / "set", 4)
    assert main(["index", str(tmp_path / "set"), *DEMO]) == EXIT_OK
    assert main(["library", "forget", str(images[0])]) == EXIT_OK
    images[1].unlink()
    capsys.readouterr()
    assert main(["search", "anything", "--json", *DEMO]) == EXIT_OK
    found = {Path(r["path"]).name for r in json_lines(capsys.readouterr().out)}
    assert found == {"img2.png", "img3.png"}


def test_without_an_embedding_model_search_is_the_caption_word_search(tmp_path, capsys):
    images = photos(tmp_path / "set", 2)
    with Library(paths.library_path()) as library:
        library.record_caption(images[0], "a red car", model="m", prompt="p")
    assert main(["search", "red", "--json"]) == EXIT_OK
    rows = json_lines(capsys.readouterr().out)
    assert [(Path(r["path"]).name, r["kind"]) for r in rows] == [("img0.png", "caption")]
    assert main(["search", "--image", str(images[0])]) == EXIT_USAGE
    assert "no embedding model is installed" in capsys.readouterr().err
    assert main(["search"]) == EXIT_USAGE


def test_siglip_made_the_default_indexes_and_searches_apart_from_clip(tmp_path, capsys):
    """`models default` switches index and search to SigLIP; CLIP's vectors stay (switching back
    costs nothing) but never answer a SigLIP query: until `index` has run with SigLIP, a search
    is by caption words alone."""
    from smolvlm_desktop import hub

    images = photos(tmp_path / "set", 4)
    hub.import_folder(paths.demo_embedding_model_dir(), name="clip-vit-base-patch32")
    hub.import_folder(paths.demo_embedding_model_dir().parent / "tiny-siglip", name="siglip")
    with Library(paths.library_path()) as library:
        library.record_caption(images[3], "a receipt", model="m", prompt="p")
    assert main(["index", str(tmp_path / "set"), "--threads", "1"]) == EXIT_OK
    assert "with clip-vit-base-patch32" in capsys.readouterr().out
    assert main(["models", "default", "siglip"]) == EXIT_OK
    capsys.readouterr()
    assert main(["search", "receipt", "--json"]) == EXIT_OK
    rows = json_lines(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in rows] == ["img3.png"] and "kind" in rows[0]  # words only
    assert main(["index", str(tmp_path / "set"), "--threads", "1"]) == EXIT_OK
    assert "indexed 4 images with siglip, 0 unchanged" in capsys.readouterr().out
    assert main(["search", "receipt", "--json"]) == EXIT_OK
    rows = json_lines(capsys.readouterr().out)
    assert len(rows) == 4 and all(r["by_meaning"] for r in rows) and rows[0]["by_words"]
    siglip = EmbeddingModel.load(paths.models_dir() / "siglip", threads=1)
    with Library(paths.library_path()) as library:
        store = VectorStore(library)
        assert store.count(siglip.key) == (4, 0) and store.count("clip-vit-base-patch32/16") == (4, 0)
