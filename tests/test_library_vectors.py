"""Embeddings in the private library: stored per image and model, skipped when unchanged,
forgotten with the image, never pixels; brute-force nearest and the fused ranking."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from smolvlm_desktop.library.db import Library, SearchHit
from smolvlm_desktop.library.vectors import VectorStore, rank_together, top_indices

MODEL = "tiny-clip/16"


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def store(tmp_path):
    library = Library(tmp_path / "library.sqlite3")
    yield VectorStore(library)
    library.close()


def _file(folder: Path, name: str, data: bytes = b"x") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_nearest_ranks_by_cosine_and_can_leave_the_query_image_out(store, tmp_path):
    a, b, c = (_file(tmp_path, n) for n in ("a.jpg", "b.jpg", "c.jpg"))
    store.add_many(MODEL, [(a, unit(1, 0, 0), None), (b, unit(1, 1, 0), None), (c, unit(0, 0, 1), None)])
    found = store.nearest(MODEL, unit(1, 0, 0), 3)
    assert [Path(p).name for p, _ in found] == ["a.jpg", "b.jpg", "c.jpg"]
    assert found[0][1] == pytest.approx(1.0) and found[1][1] == pytest.approx(0.7071, abs=1e-4)
    like_a = store.nearest(MODEL, store.vector_for(MODEL, a), 2, exclude=str(a.resolve()))
    assert [Path(p).name for p, _ in like_a] == ["b.jpg", "c.jpg"]
    assert store.nearest("another-model/16", unit(1, 0, 0), 3) == []


def test_unchanged_files_are_not_stale_and_changed_ones_are(store, tmp_path):
    a, b, broken = _file(tmp_path, "a.jpg"), _file(tmp_path, "b.jpg"), _file(tmp_path, "broken.jpg")
    assert store.stale(MODEL, [a, b, broken]) == [str(p.resolve()) for p in (a, b, broken)]
    store.add(MODEL, a, unit(1, 0))
    store.add(MODEL, broken, None, error="not an image")
    assert store.stale(MODEL, [a, b, broken]) == [str(b.resolve())]
    assert store.count(MODEL) == (1, 1)
    a.write_bytes(b"a longer file")  # edited in place: size and mtime change
    os.utime(broken, (1, 1))
    assert store.stale(MODEL, [a, b, broken]) == [str(p.resolve()) for p in (a, b, broken)]
    assert store.stale("another-model/16", [a]) == [str(a.resolve())]
    assert store.stale(MODEL, []) == []
    many = [_file(tmp_path, f"many{i}.jpg") for i in range(150)]  # past the per-path lookup
    store.add_many(MODEL, [(p, unit(1, 0), None) for p in many[:100]])
    assert store.stale(MODEL, many) == [str(p.resolve()) for p in many[100:]]


def test_forgetting_an_image_or_folder_forgets_its_embedding(store, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    a, b, c = _file(tmp_path, "a.jpg"), _file(sub, "b.jpg"), _file(sub, "c.jpg")
    store.add_many(MODEL, [(p, unit(1, i), None) for i, p in enumerate((a, b, c))])
    assert len(store.matrix(MODEL)[0]) == 3
    store.library.forget_image(a)
    assert store.vector_for(MODEL, a) is None
    assert sorted(Path(p).name for p in store.matrix(MODEL)[0]) == ["b.jpg", "c.jpg"]
    store.library.forget_folder(sub)
    assert store.matrix(MODEL)[0] == [] and store.count(MODEL) == (0, 0)
    store.add(MODEL, a, unit(1, 0))
    store.library.forget_all()
    with sqlite3.connect(store.library.path) as raw:
        assert raw.execute("SELECT count(*) FROM image_embeddings").fetchone()[0] == 0


def test_pixels_never_enter_the_library(store, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    image = _file(tmp_path, "photo.png", pixels)
    store.add(MODEL, image, unit(1, 2, 3))
    store.library._checkpoint()
    stored = store.library.path.read_bytes()
    assert not any(pixels[i:i + 32] in stored for i in range(0, len(pixels), 4096))
    assert unit(1, 2, 3).tobytes() in stored  # the vector is what is kept


def test_an_embedding_keeps_the_facts_a_caption_recorded(store, tmp_path):
    image = _file(tmp_path, "a.jpg", b"content")
    store.library.record_caption(image, "a red car", model="m", prompt="p")
    before = sqlite3.connect(store.library.path).execute("SELECT sha256, size FROM images").fetchall()
    store.add(MODEL, image, unit(1, 0))
    after = sqlite3.connect(store.library.path).execute("SELECT sha256, size FROM images").fetchall()
    assert before == after and before[0][0] is not None


def test_another_process_adding_vectors_is_seen_by_a_cached_store(store, tmp_path):
    a, b = _file(tmp_path, "a.jpg"), _file(tmp_path, "b.jpg")
    store.add(MODEL, a, unit(1, 0))
    assert len(store.matrix(MODEL)[0]) == 1
    with Library(store.library.path) as other:
        VectorStore(other).add(MODEL, b, unit(0, 1))
    assert len(store.matrix(MODEL)[0]) == 2


def test_top_indices_are_the_largest_in_order():
    scores = np.array([0.1, 0.9, 0.5, 0.9, -1.0], dtype=np.float32)
    assert top_indices(scores, 3).tolist() == [1, 3, 2]
    assert top_indices(scores, 10).tolist() == [1, 3, 2, 0, 4]
    assert top_indices(scores, 0).tolist() == []


def _hit(path: str, text: str) -> SearchHit:
    return SearchHit(path, text, "m", "t", text, "caption", (path,))


def test_rank_together_puts_what_both_rankings_agree_on_first():
    meaning = [("/m1", 0.31), ("/both", 0.30), ("/m3", 0.29)]
    words = [_hit("/w1", "a receipt"), _hit("/both", "receipt from the shop")]
    ranked = rank_together(meaning, words, limit=10)
    assert ranked[0].path == "/both" and ranked[0].by_meaning and ranked[0].by_words
    assert ranked[0].caption == "receipt from the shop" and ranked[0].score == pytest.approx(0.30)
    assert {m.path for m in ranked} == {"/m1", "/both", "/m3", "/w1"}
    assert [m.path for m in rank_together(meaning, [], limit=2)] == ["/m1", "/both"]
    assert [m.path for m in rank_together([], words, limit=5)] == ["/w1", "/both"]
