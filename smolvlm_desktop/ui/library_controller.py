"""Library behaviour: search as you type, show a hit's image, forget images or everything.

The library is opened by the worker in its thread (worker.py); it is safe to use from any
thread, so searches and forgets run in the task pool and never wait behind a long answer in
the worker's queue. Nothing here runs on the GUI thread but the widgets.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QFileDialog, QMessageBox, QPushButton, QWidget

from .. import paths as app_paths
from ..worker import EngineWorker
from . import theme
from .gallery import square_icon
from .library_panel import LibraryPanel
from .meaning import MeaningSearch
from .tasks import TaskRunner
from .thumbnails import make_thumbnail

SEARCH_DELAY_MS = 200  # wait for a pause in typing before searching
SEARCH_LIMIT = 50


class LibraryController(QObject):
    status = Signal(str)
    show_paths = Signal(list)  # image paths of a chosen hit: put them in the gallery, selected
    forgotten = Signal()  # something was forgotten: a resume offer may be gone
    files_deleted = Signal(list)  # pasted pictures deleted with what was forgotten
    index_progress = Signal(object)  # semantic.IndexProgress, from the indexing thread
    index_finished = Signal(object)  # the final IndexProgress, or the exception that stopped it

    def __init__(self, panel: LibraryPanel, worker: EngineWorker, tasks: TaskRunner,
                 colours: Callable[[], dict[str, str]]) -> None:
        super().__init__()
        self.panel, self.worker, self.tasks, self.colours = panel, worker, tasks, colours
        self.searches = 0  # sequence number: a late answer to an older query is dropped
        self.last_hits: list[Any] = []
        self._icons: dict[str, QIcon] = {}  # result thumbnails by image path
        self.last_matches: tuple[str, list[Any]] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SEARCH_DELAY_MS)
        self._timer.timeout.connect(self.search_now)
        panel.search.textChanged.connect(lambda: self._timer.start())
        panel.search.returnPressed.connect(self.search_now)
        panel.hit_chosen.connect(self._chosen)
        # search by meaning (an embedding model is installed): see meaning.py
        self.meaning = MeaningSearch()
        self.indexing: threading.Thread | None = None
        self.index_cancel = threading.Event()
        self.index_queue: list[str] = []  # images (or folders) waiting for the indexing thread
        self.index_quiet = False  # the running indexing was not asked for: report only results
        self._next_quiet = True  # everything queued since was not asked for either
        panel.more_like_this.connect(self.more_like)
        panel.index_folder.connect(lambda: self.index_folder())
        self.index_progress.connect(self._index_progress)
        self.index_finished.connect(self._index_finished)
        if self.meaning.available():
            panel.index_btn.show()
            panel.search.setPlaceholderText("Search your images by what they show, or by captions "
                                            "and chats (Ctrl+F)…")

    @property
    def library(self) -> Any:
        return self.worker.library

    def search_now(self) -> None:
        self._timer.stop()
        query = self.panel.search.text().strip()
        self.searches += 1
        number = self.searches
        if not query:
            self.last_hits = []
            self.panel.show_message("Search what the app has learned",
                                    "Every chat answer and batch caption is kept in a private "
                                    "library on this computer. Type a word to find the images "
                                    "it was about.")
            return
        library = self.library
        if library is None:
            self.panel.show_message("The library is not available",
                                    "It could not be opened this session (see the note at the "
                                    "top of the window), so there is nothing to search.")
            return
        if self.meaning.available():
            self.tasks.run(lambda: self.meaning.search(library, query, None, SEARCH_LIMIT),
                           lambda rows: self._show_matches(number, f"“{query}”", rows),
                           lambda exc: self._failed(number, exc))
            return
        self.tasks.run(lambda: library.search(query, SEARCH_LIMIT, prefix=True),
                       lambda hits: self._show(number, query, hits),
                       lambda exc: self._failed(number, exc))

    def more_like(self, path: str) -> None:
        """Images that look like `path` (its stored embedding, or a fresh one)."""
        library = self.library
        if library is None or not self.meaning.available():
            self.status.emit("Search by meaning needs an embedding model: "
                             "smolvlm-desktop models pull clip-vit-base-patch32")
            return
        self.searches += 1
        number = self.searches
        name = Path(path).name
        self._timer.stop()
        self.panel.search.blockSignals(True)  # the words no longer describe what is shown
        self.panel.search.clear()
        self.panel.search.blockSignals(False)
        self.tasks.run(lambda: self.meaning.search(library, "", path, SEARCH_LIMIT),
                       lambda rows: self._show_matches(number, f"More like {name}", rows),
                       lambda exc: self._failed(number, exc))

    def _show_matches(self, number: int, heading: str, rows: list[Any]) -> None:
        if number != self.searches:
            return
        self.last_hits = []
        self.last_matches = (heading, rows)
        if rows:
            self.panel.show_matches(rows, self.colours(), heading)
        else:
            self.panel.show_message(f"Nothing found for {heading}",
                                    "No image is indexed yet and no caption or chat has these "
                                    "words. Use “Index a folder…” to make your images searchable "
                                    "by what they show.")

    # --- indexing -----------------------------------------------------------------------

    def index_folder(self, folder: str | None = None) -> None:
        """Embed every image under a folder (asked for with a dialog when not given)."""
        if self.library is None:
            self.status.emit("The library is not available this session")
            return
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self.panel, "Index a folder")
            if not folder:
                return
        self._queue_indexing([folder], quiet=False)

    def index_in_background(self, paths: list[str]) -> None:
        """Images that entered the window (opened, dropped): embed them too, quietly, when an
        embedding model is installed; unchanged ones cost a stat each."""
        if paths and self.library is not None and self.meaning.available():
            self._queue_indexing(paths, quiet=True)

    def _queue_indexing(self, paths: list[str], quiet: bool) -> None:
        self.index_queue.extend(paths)
        self._next_quiet = self._next_quiet and quiet
        if self.indexing is None:
            self._start_indexing()
        elif not quiet:
            self.status.emit("Queued: indexing continues with this folder next")

    def _start_indexing(self) -> None:
        """One background thread at a time works through the queue; it waits while the worker
        answers a chat or runs a batch, so the window's own work always comes first."""
        library = self.library
        paths, self.index_queue = self.index_queue, []
        self.index_quiet, self._next_quiet = self._next_quiet, True
        self.index_cancel.clear()
        cancel = self.index_cancel

        def wait_while_busy() -> None:
            while self.worker.busy and not cancel.is_set():
                time.sleep(0.05)

        def run() -> None:
            try:
                result: Any = self.meaning.index(library, paths, self.index_progress.emit,
                                                 cancel, wait_while_busy)
            except Exception as exc:  # noqa: BLE001 - told to the user, never lost
                result = exc
            self.index_finished.emit(result)

        self.indexing = threading.Thread(target=run, name="index-images", daemon=True)
        self.indexing.start()

    def stop_indexing(self) -> None:
        """Stop after the image being embedded (closing the window); what is done is kept."""
        self.index_cancel.set()
        if self.indexing is not None:
            self.indexing.join()

    def _index_progress(self, p: Any) -> None:
        if self.index_quiet and not p.total:
            return
        self.status.emit(f"Indexing: {p.done} of {p.total} images"
                         + (f", {p.skipped} unchanged" if p.skipped else ""))

    def _index_finished(self, result: Any) -> None:
        self.indexing = None
        if self.index_queue and not self.index_cancel.is_set():
            self._start_indexing()
        if isinstance(result, Exception):
            self.status.emit(f"Indexing stopped: {result}")
            return
        if self.index_quiet and not result.total:
            return
        self.status.emit(f"Indexed {result.done - result.failed} images"
                         + (f" ({result.failed} could not be read)" if result.failed else "")
                         + (f", {result.skipped} unchanged" if result.skipped else ""))
        if self.panel.search.text().strip():
            self.search_now()

    def _show(self, number: int, query: str, hits: list[Any]) -> None:
        if number != self.searches:
            return
        self.last_hits = hits
        if hits:
            self.panel.show_hits(hits, self.colours())
            self._thumbnails(hits)
        else:
            self.panel.show_message(f"Nothing found for “{query}”",
                                    "No caption or chat contains every one of these words. "
                                    "Try fewer or shorter words.")

    def restyle(self) -> None:
        """The theme changed: the hits' HTML carries palette colours."""
        if self.last_hits:
            row = self.panel.hits.currentRow()
            self.panel.show_hits(self.last_hits, self.colours())
            self._thumbnails(self.last_hits)
            self.panel.hits.setCurrentRow(row)  # the selection survives a theme change
        elif self.last_matches and self.last_matches[1]:
            row = self.panel.hits.currentRow()
            self.panel.show_matches(self.last_matches[1], self.colours(), self.last_matches[0])
            self.panel.hits.setCurrentRow(row)

    def _thumbnails(self, hits: list[Any]) -> None:
        """Each result's image, small: decoded once in the task pool, then kept."""
        for path in dict.fromkeys(h.path for h in hits if h.path):
            if path in self._icons:
                self.panel.set_thumbnail(path, self._icons[path])
            else:
                self.tasks.run(lambda p=path: make_thumbnail(p, 96), self._thumbnail_ready)

    def _thumbnail_ready(self, thumb: Any) -> None:
        icon = (square_icon(thumb.image) if thumb.image is not None else theme.icon("broken-image"))
        self._icons[thumb.path] = icon
        self.panel.set_thumbnail(thumb.path, icon)

    def _failed(self, number: int, exc: Exception) -> None:
        if number == self.searches:
            self.panel.show_message("The search failed", str(exc))

    def _chosen(self, hit: Any) -> None:
        paths = [p for p in (getattr(hit, "paths", ()) or (hit.path,)) if p]
        if paths:
            self.show_paths.emit(paths)
        else:
            self.status.emit("That chat had no image")

    # --- forgetting ---------------------------------------------------------------------

    def forget_images(self, parent: QWidget, paths: list[str]) -> None:
        library = self.library
        if library is None:
            self.status.emit("The library is not available this session")
            return
        if not paths:
            self.status.emit("Select the images to forget in the gallery first")
            return
        n = len(paths)
        noun = "this image" if n == 1 else f"these {n} images"
        pasted = [p for p in paths if is_pasted(p)]
        files = ("Pasted pictures are the app's own copies and are deleted too; other image files "
                 "and the caption files next to them are not touched." if pasted else
                 "The image files and the caption files next to them are not touched.")
        if not self._confirm(parent, "Forget images?",
                             f"Forget {noun}? Their captions, chats and batch records are "
                             f"removed from the library for good. {files}", "Forget"):
            return

        def forget() -> tuple[list[Any], list[str]]:
            return [library.forget_image(p) for p in paths], delete_pasted(pasted)

        self.tasks.run(forget, self._forgotten,
                       lambda exc: self.status.emit(f"Could not forget: {exc}"))

    def forget_everything(self, parent: QWidget) -> None:
        library = self.library
        if library is None:
            self.status.emit("The library is not available this session")
            return
        if not self._confirm(parent, "Forget everything?",
                             "Empty the whole library? Every remembered caption, chat and "
                             "batch job is removed for good, and unfinished batches can no "
                             "longer be resumed. Your images and caption files are not touched.",
                             "Forget everything"):
            return
        def forget() -> tuple[list[Any], list[str]]:
            results = [library.forget_all()]
            return results, delete_pasted([str(p) for p in app_paths.pasted_dir().glob("pasted-*.png")])

        self.tasks.run(forget, self._forgotten,
                       lambda exc: self.status.emit(f"Could not forget: {exc}"))

    @staticmethod
    def _confirm(parent: QWidget, title: str, text: str, action: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Cancel,
                          parent)
        forget = QPushButton(action)
        forget.setObjectName("Danger")  # red, like Stop and Cancel: this cannot be undone
        box.addButton(forget, QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is forget

    def _forgotten(self, done: tuple[list[Any], list[str]]) -> None:
        results, deleted = done
        captions = sum(r.captions for r in results)
        chats = sum(r.chats for r in results)
        jobs = sum(r.job_items for r in results)
        self.status.emit(f"Forgotten: {captions} caption{'s' if captions != 1 else ''}, "
                         f"{chats} chat{'s' if chats != 1 else ''}, {jobs} batch record"
                         f"{'s' if jobs != 1 else ''}")
        self.search_now()
        self.forgotten.emit()
        if deleted:
            self.files_deleted.emit(deleted)


def is_pasted(path: str) -> bool:
    """A picture the app saved from the clipboard (its own copy, not one of the user's files)."""
    return Path(path).parent == app_paths.pasted_dir() and Path(path).name.startswith("pasted-")


def delete_pasted(paths: list[str]) -> list[str]:
    """Delete the app's copies of pasted pictures; returns those deleted."""
    deleted = []
    for path in paths:
        if is_pasted(path):
            try:
                Path(path).unlink()
                deleted.append(path)
            except FileNotFoundError:
                deleted.append(path)
            except OSError:
                pass  # kept: a file in use on Windows; the next Forget tries again
    return deleted
