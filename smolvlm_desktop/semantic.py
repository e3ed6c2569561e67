"""Search by meaning: index images into the library's vector store, and query it.

Shared by the command line (`index`, `search`) and the window's worker, so both do the same:

* `index_images` embeds the images whose size or mtime changed since they were last embedded
  (everything else is skipped), a batch at a time, each batch committed at once: killed at any
  moment, the next run continues where this one stopped. A file that cannot be decoded is
  recorded with its reason and reported, and the run goes on. The next batch is decoded and
  pre-processed in a second thread while the current one runs through the model (Pillow and
  numpy release the GIL), so decoding costs little wall time.
* `search` ranks by meaning (the query text's, or an example image's, embedding against every
  stored one) and by caption words (the library's full-text search) together, by reciprocal
  rank fusion (library/vectors.py `rank_together`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .engine.embeddings import EmbeddingModel, load_for_embedding, preprocess
from .engine.types import ImageError
from .library.db import Library
from .library.vectors import Match, VectorStore, rank_together

BATCH = 8  # images per model run and per library transaction


@dataclass
class IndexProgress:
    done: int  # images embedded or failed so far in this run
    total: int  # images this run has to embed (the unchanged ones are not counted)
    skipped: int  # unchanged since they were last embedded
    failed: int
    path: str = ""  # the last image finished
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def index_images(model: EmbeddingModel, store: VectorStore, images: Sequence[str | os.PathLike[str]],
                 progress: Callable[[IndexProgress], None] | None = None,
                 cancel: threading.Event | None = None, batch: int = BATCH) -> IndexProgress:
    """Embed the images that need it into `store`; returns the final counts. Setting `cancel`
    stops after the batch being embedded (it is stored: nothing done is lost)."""
    todo = store.stale(model.key, images)
    state = IndexProgress(0, len(todo), len(images) - len(todo), 0)
    if progress:
        progress(state)
    for chunk in _decoded_batches(model, todo, batch):
        if cancel is not None and cancel.is_set():
            break
        good = [(path, pixels) for path, pixels in chunk if isinstance(pixels, np.ndarray)]
        vectors = model.embed_pixels(np.stack([p for _, p in good])) if good else np.zeros((0, 0))
        by_path = {path: vector for (path, _), vector in zip(good, vectors)}
        rows = []
        for path, pixels in chunk:
            if isinstance(pixels, np.ndarray):
                rows.append((path, by_path[path], None))
            else:
                rows.append((path, None, pixels))
                state.failures.append((path, pixels))
        store.add_many(model.key, rows)
        state.done += len(chunk)
        state.failed = len(state.failures)
        state.path = chunk[-1][0]
        if progress:
            progress(state)
    return state


def _decoded_batches(model: EmbeddingModel, paths: Sequence[str], batch: int
                     ) -> Iterator[list[tuple[str, np.ndarray | str]]]:
    """Batches of (path, the model's input pixels or the reason there are none), ahead."""
    settings = model.files.processor

    def decode(path: str) -> np.ndarray | str:
        try:
            return preprocess(load_for_embedding(path, settings), settings)
        except ImageError as exc:
            return str(exc)
        except OSError as exc:  # vanished or unreadable between listing and decoding
            return f"{Path(path).name}: {exc.strerror or exc}"

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-decode") as pool:
        pending: list[tuple[str, Future]] = [(p, pool.submit(decode, p)) for p in paths[:batch]]
        next_index = len(pending)
        while pending:
            # queue the next batch's decodes before handing this one to the model
            ahead = [(p, pool.submit(decode, p)) for p in paths[next_index:next_index + batch]]
            next_index += len(ahead)
            yield [(p, f.result()) for p, f in pending]
            pending = ahead


def search(library: Library, store: VectorStore, model: EmbeddingModel | None, query: str = "",
           image: str | os.PathLike[str] | None = None, limit: int = 20) -> list[Match]:
    """Images ranked by meaning and caption words together (see rank_together).

    With `image`, "more like this": its stored embedding (or a fresh one) is the query and the
    image itself is left out. Without a model, or before anything is indexed, only words count.
    Images whose file is gone are left out (their library entry stays until forgotten)."""
    by_meaning: list[tuple[str, float]] = []
    if model is not None and (image is not None or query.strip()):
        vector = _query_vector(model, store, query, image)
        exclude = str(Path(image).expanduser().resolve()) if image is not None else None
        candidates = store.nearest(model.key, vector, 2 * limit, exclude=exclude)
        by_meaning = [(p, s) for p, s in candidates if os.path.exists(p)][:limit]
    by_words = library.search(query, limit=limit) if query.strip() else []
    return rank_together(by_meaning, by_words, limit)


def _query_vector(model: EmbeddingModel, store: VectorStore, query: str,
                  image: str | os.PathLike[str] | None) -> np.ndarray:
    if image is None:
        return model.embed_texts([query])[0]
    vector = None if store.stale(model.key, [image]) else store.vector_for(model.key, image)
    if vector is None:
        vector = model.embed_images([load_for_embedding(image, model.files.processor)])[0]
    if query.strip():  # an image and words: both meanings, equally weighted
        vector = vector + model.embed_texts([query])[0]
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return vector

