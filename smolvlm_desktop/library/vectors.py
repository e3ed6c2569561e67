"""Image embeddings in the private library, and search by meaning over them.

What is stored: per image and embedding model, the unit-length vector (float32 bytes, 2 KB for
CLIP's 512 dimensions) and the file's size and mtime when it was embedded, never pixels. An
image whose size and mtime are unchanged is not embedded again (`stale`), which is what makes
`index` resumable: a run killed at any moment leaves every finished image stored, and the next
run starts where it stopped. A file that could not be read is remembered with its error, so a
broken file is not retried until it changes.

The rows hang off the library's `images` table (ON DELETE CASCADE), so every way the library
forgets an image (`library forget`, forget folder, forget all) forgets its embedding too, in
the same transaction, with the same secure_delete and checkpoint. The table is created here,
on the Library's own connection, so the library's schema migrations stay db.py's alone.

Search is brute force: one matrix-vector product over all stored vectors, in numpy. Measured
(bench/vectors.py; AMD EPYC, 2 cores): see README "Search by meaning".
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .db import Library, SearchHit, _now, normalize_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_embeddings (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    model TEXT NOT NULL,                -- EmbeddingModel.key: vectors of two models never mix
    size INTEGER,                       -- the file's size and mtime when embedded
    mtime REAL,
    vector BLOB,                        -- float32, unit length; NULL when the file failed
    error TEXT,                         -- why it failed (unreadable, not an image...)
    created_at TEXT NOT NULL,
    PRIMARY KEY (image_id, model)
);
"""
# Reciprocal rank fusion constant (Cormack et al. 2009): a result's combined score is the sum
# of 1 / (RRF_K + rank) over the rankings it appears in. 60 is the paper's value; it keeps one
# list's top hit from drowning everything the other list agrees on.
RRF_K = 60


@dataclass(frozen=True)
class Match:
    """One image found by meaning and/or by caption words."""

    path: str
    score: float  # the cosine similarity to the query (0 when found by words only)
    rank_score: float  # the fused score the list is ordered by
    caption: str = ""  # the caption or chat text that matched the words, if any
    by_meaning: bool = False
    by_words: bool = False
    snippet: str = ""  # the caption's matching words, marked as in SearchHit.snippet


class VectorStore:
    """The embeddings of one library file. Thread-safe like the Library it uses."""

    def __init__(self, library: Library) -> None:
        self.library = library
        exists = library._read(  # noqa: SLF001 - the library's own connection and lock
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'image_embeddings'")
        if not exists:  # a read first: a search must not wait for another process's write lock
            with library._write() as conn:  # noqa: SLF001
                conn.execute(SCHEMA)
        self._cache: dict[str, tuple[tuple[int, int], list[str], np.ndarray]] = {}
        self._cache_lock = threading.Lock()

    # --- writing -----------------------------------------------------------------------------

    def stale(self, model: str, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """The paths (normalised) that have no embedding for `model` or changed since."""
        keys = [normalize_path(p) for p in paths]
        few = len(keys) <= 100  # e.g. a query image: look them up instead of reading every row
        sql = ("SELECT i.path, e.size, e.mtime FROM image_embeddings e JOIN images i ON i.id = e.image_id "
               "WHERE e.model = ?" + (f" AND i.path IN ({', '.join('?' * len(keys))})" if few else ""))
        known = {row[0]: (row[1], row[2]) for row in self.library._read(  # noqa: SLF001
            sql, (model, *keys) if few else (model,))}
        out = []
        for key in keys:
            try:
                st = os.stat(key)
                facts = (st.st_size, st.st_mtime)
            except OSError:
                facts = (None, None)
            if known.get(key) != facts:
                out.append(key)
        return out

    def add(self, model: str, path: str | os.PathLike[str], vector: np.ndarray | None,
            error: str | None = None) -> None:
        """Store one image's vector (or why it has none), replacing an older one."""
        self.add_many(model, [(path, vector, error)])

    def add_many(self, model: str,
                 items: Sequence[tuple[str | os.PathLike[str], np.ndarray | None, str | None]]) -> None:
        """Several images in one transaction (one fsync for a batch of embeddings)."""
        rows = []
        for path, vector, error in items:
            key = normalize_path(path)
            try:
                st = os.stat(key)
                size, mtime = st.st_size, st.st_mtime
            except OSError:
                size, mtime = None, None
            blob = None if vector is None else np.asarray(vector, dtype="<f4").tobytes()
            rows.append((key, size, mtime, blob, error))
        with self.library._write() as conn:  # noqa: SLF001
            for key, size, mtime, blob, error in rows:
                # A new images row gets only the path: the captions' hash and facts are theirs.
                conn.execute("INSERT INTO images(path, seen_at) VALUES (?, ?) ON CONFLICT(path) DO NOTHING",
                             (key, _now()))
                image_id = conn.execute("SELECT id FROM images WHERE path = ?", (key,)).fetchone()[0]
                conn.execute(
                    "INSERT OR REPLACE INTO image_embeddings(image_id, model, size, mtime, vector, error, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (image_id, model, size, mtime, blob, error, _now()))

    # --- reading -----------------------------------------------------------------------------

    def count(self, model: str) -> tuple[int, int]:
        """(images embedded, images that failed) for `model`."""
        row = self.library._read(  # noqa: SLF001
            "SELECT count(vector), count(*) - count(vector) FROM image_embeddings WHERE model = ?",
            (model,))[0]
        return int(row[0]), int(row[1])

    def vector_for(self, model: str, path: str | os.PathLike[str]) -> np.ndarray | None:
        rows = self.library._read(  # noqa: SLF001
            "SELECT e.vector FROM image_embeddings e JOIN images i ON i.id = e.image_id "
            "WHERE e.model = ? AND i.path = ?", (model, normalize_path(path)))
        return np.frombuffer(rows[0][0], dtype="<f4").copy() if rows and rows[0][0] else None

    def matrix(self, model: str) -> tuple[list[str], np.ndarray]:
        """(paths, float32 [n, dim]) of every stored vector, cached until the library changes
        (this process's writes and, through PRAGMA data_version, any other process's)."""
        version = self._version()
        with self._cache_lock:
            cached = self._cache.get(model)
            if cached and cached[0] == version:
                return cached[1], cached[2]
        rows = self.library._read(  # noqa: SLF001
            "SELECT i.path, e.vector FROM image_embeddings e JOIN images i ON i.id = e.image_id "
            "WHERE e.model = ? AND e.vector IS NOT NULL ORDER BY e.image_id", (model,))
        paths = [r[0] for r in rows]
        if rows:
            dim = len(rows[0][1]) // 4
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        else:
            vectors = np.zeros((0, 0), dtype=np.float32)
        with self._cache_lock:
            self._cache[model] = (version, paths, vectors)
        return paths, vectors

    def _version(self) -> tuple[int, int]:
        """Changes when anyone wrote: data_version counts other connections' commits,
        total_changes() this connection's own (embeddings added, images forgotten)."""
        row = self.library._read("SELECT total_changes()")[0]  # noqa: SLF001
        return self.library._read("PRAGMA data_version")[0][0], row[0]  # noqa: SLF001

    def nearest(self, model: str, query: np.ndarray, limit: int,
                exclude: str | None = None) -> list[tuple[str, float]]:
        """The `limit` stored images most like the unit vector `query`, best first."""
        paths, vectors = self.matrix(model)
        if not paths or limit < 1:
            return []
        scores = vectors @ np.asarray(query, dtype=np.float32)
        top = top_indices(scores, limit + (exclude is not None))
        found = [(paths[i], float(scores[i])) for i in top]
        return [hit for hit in found if hit[0] != exclude][:limit]


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, largest first (argpartition: O(n), not a full sort)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def rank_together(by_meaning: Sequence[tuple[str, float]], by_words: Sequence[SearchHit],
                  limit: int) -> list[Match]:
    """One list from the two rankings, by reciprocal rank fusion: an image's score is
    1/(RRF_K + its rank by meaning) + 1/(RRF_K + its rank by caption words), counting only the
    lists it is in. Ranks, not raw scores, are fused because a cosine and a bm25 value are not
    on any common scale; an image both lists agree on comes first."""
    fused: dict[str, dict] = {}
    for rank, (path, score) in enumerate(by_meaning, start=1):
        entry = fused.setdefault(path, {"score": 0.0, "rank": 0.0, "caption": "", "m": False, "w": False})
        entry.update(score=score, m=True)
        entry["rank"] += 1 / (RRF_K + rank)
    rank = 0
    for hit in by_words:
        for path in hit.paths or (hit.path,):
            if not path:
                continue
            entry = fused.setdefault(path, {"score": 0.0, "rank": 0.0, "caption": "", "m": False, "w": False})
            if entry["w"]:
                continue  # the image's best caption counts once
            rank += 1
            entry.update(caption=hit.text, snippet=hit.snippet, w=True)
            entry["rank"] += 1 / (RRF_K + rank)
    ordered = sorted(fused.items(), key=lambda kv: (-kv[1]["rank"], -kv[1]["score"], kv[0]))
    return [Match(path, e["score"], e["rank"], e["caption"], e["m"], e["w"], e.get("snippet", ""))
            for path, e in ordered[:limit]]
