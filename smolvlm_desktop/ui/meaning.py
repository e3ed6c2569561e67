"""Search by meaning from the window: the embedding model and the vector store, used from the
task pool (never the GUI thread), and indexing that gives way to chat.

The embedding model is the one `paths.resolve_embedding_model` names (SMOLVLM_EMBEDDING_MODEL,
'demo' = the bundled tiny CLIP; else the one chosen with Set as default, else CLIP ViT-B/32);
it is loaded on the first search, in a pool thread, and kept until another one is chosen.
Without one, the Library page keeps its caption-word search and says how to get search by
meaning.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from ..library.vectors import Match, VectorStore
from ..paths import ModelNotFoundError, ort_cache_dir, resolve_embedding_model
from .thumbnails import Thumb, make_thumbnail

ROW_THUMB_EDGE = 128  # decoded size of a result's thumbnail (shown at 64 px, sharp on high DPI)


class MeaningSearch:
    """Thread-safe: each call may come from any pool thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None
        self._stores: dict[int, VectorStore] = {}

    @staticmethod
    def folder() -> Path | None:
        try:
            return resolve_embedding_model(None)
        except ModelNotFoundError:
            return None

    def available(self) -> bool:
        return self._model is not None or self.folder() is not None

    def model(self) -> Any:
        """The EmbeddingModel, loaded on first use (ModelNotFoundError if none is installed)."""
        folder = resolve_embedding_model(None)
        with self._lock:
            if self._model is None or self._model.files.folder != folder:
                from ..engine.embeddings import EmbeddingModel

                self._model = EmbeddingModel.load(folder, cache_dir=ort_cache_dir())
            return self._model

    def store(self, library: Any) -> VectorStore:
        with self._lock:
            if id(library) not in self._stores:
                self._stores = {id(library): VectorStore(library)}
            return self._stores[id(library)]

    def search(self, library: Any, query: str, image: str | None, limit: int) -> list[tuple[Match, Thumb]]:
        """Ranked matches with their thumbnails (decoded here, off the GUI thread)."""
        from ..semantic import search

        matches = search(library, self.store(library), self.model(), query, image, limit)
        return [(m, make_thumbnail(m.path, ROW_THUMB_EDGE)) for m in matches]

    def index(self, library: Any, images: list[str], progress: Callable[[Any], None],
              cancel: threading.Event, wait_while_busy: Callable[[], None]) -> Any:
        """Embed `images` (folders are expanded, recursively) one at a time, calling
        wait_while_busy() before each so a chat never waits for more than one image."""
        from ..library.discover import discover_images
        from ..semantic import index_images

        images, _ = discover_images([Path(p) for p in images], recursive=True)
        model, store = self.model(), self.store(library)

        def each(p: Any) -> None:
            progress(p)
            wait_while_busy()

        return index_images(model, store, images, progress=each, cancel=cancel, batch=1)
