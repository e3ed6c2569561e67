"""The main window: puts the parts together and owns the worker thread and the task pool.

    ┌ demo banner (only with the demo model) ─────────────────────────┐
    │ notice banner (settings we could not use, model problems)       │
    │ ┌ gallery strip / drop zone ──────────────────────────────────┐ │
    │ ├ [Chat | Batch] ─────────────────────────────────────────────┤ │
    │ └─────────────────────────────────────────────────────────────┘ │
    └ status bar: model · variant · provider      speed of last answer┘

When no model can be found the central area shows the no-model page instead.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDragLeaveEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import (QApplication, QFileDialog, QLabel, QMainWindow, QMessageBox,
                               QStackedWidget, QTabWidget, QVBoxLayout, QWidget)

from .. import crashlog, paths
from .. import settings as settings_mod
from ..engine.types import ModelInfo
from ..settings import THEMES, Settings
from ..worker import ERROR, READY, EngineWorker, LibraryJob, ModelSpec, WorkerThread
from . import theme
from .actions import build_menus, shortcuts_text
from .batch_controller import BatchController
from .batch_panel import BatchPanel
from .chat_controller import ChatController
from .chat_panel import ChatPanel
from .crash_dialog import CrashDialog, error_dialog, previous_crash_dialog
from .gallery import GalleryStrip
from .library_controller import LibraryController
from .library_panel import LibraryPanel
from .model_chooser import NoModelPage
from .model_manager import ModelManagerDialog
from .settings_dialog import SettingsDialog
from .status_bar import StatusBar
from .tasks import TaskRunner
from .text import reason_for

DEMO_TEXT = ("DEMO MODEL: this is a tiny model with random weights, bundled for trying the "
             "window out. Its answers are random noise, not descriptions of your images.")


MORE_ERRORS_SHOWN = 20  # later errors of a session added to the first one's message


def _writer_formats() -> list[str]:
    from ..library.writers import FORMATS

    return list(FORMATS)


class MainWindow(QMainWindow):
    closed = Signal()
    unexpected_error = Signal(str)  # an errors.log entry, emitted from whichever thread raised

    def __init__(self, settings: Settings | None = None, synchronous: bool = False,
                 persist: bool = True) -> None:
        """persist=False (the self-test) never writes the settings file nor the library."""
        super().__init__()
        self.settings = settings if settings is not None else settings_mod.load()
        self.persist = persist
        self.setWindowTitle(paths.APP_NAME)
        self.setWindowIcon(theme.icon("app"))
        self.setAcceptDrops(True)
        self.model_state = "unloaded"
        self.model_info: ModelInfo | None = None
        self.demo = False
        self._paste_dir: str | None = None
        self._shut_down = False
        self._library_calls: dict[int, Callable[[Any], None]] = {}
        self._library_problem_shown = False
        self.log_dir: Path | None = None
        self.crash_dialog: CrashDialog | None = None
        self.error_dialog: CrashDialog | None = None
        self._errors_added = 0
        # Queued even from this thread: the message is built after the hook has returned.
        self.unexpected_error.connect(self._on_unexpected_error, Qt.ConnectionType.QueuedConnection)
        self.tasks = TaskRunner(self, synchronous=synchronous)
        self.worker = EngineWorker(synchronous=synchronous, use_library=persist)
        self.worker.library_result.connect(self._on_library_result)
        self.worker.library_problem.connect(self._on_library_problem)
        self._build()
        # Started only once the window is built: a failure above leaves no thread running.
        self.thread = None if synchronous else WorkerThread(self.worker)
        self.actions = build_menus(self, list(THEMES), self.set_theme, self.settings.theme)
        self.worker.model_state.connect(self._on_model_state)
        self.worker.set_idle_unload(self.settings.idle_unload_minutes * 60_000)
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_scheme_changed)
        self.apply_theme()
        self._restore_geometry()
        self._show_settings_problems()
        # First job of the worker: open the library and look for a batch to resume.
        self.check_unfinished_batch()

    # --- building --------------------------------------------------------------------------

    def _build(self) -> None:
        self.demo_banner = QLabel(DEMO_TEXT)
        self.demo_banner.setObjectName("DemoBanner")
        self.demo_banner.setWordWrap(True)
        self.demo_banner.setAccessibleName("Demo model warning")
        self.demo_banner.hide()
        self.notice = QLabel()
        self.notice.setObjectName("NoticeBanner")
        self.notice.setWordWrap(True)
        self.notice.hide()
        self.gallery = GalleryStrip(self.tasks)
        self.gallery.open_images.connect(self.open_images)
        self.gallery.open_folder.connect(self.open_folder)
        self.gallery.unreadable.connect(self._unreadable)
        self.chat_panel = ChatPanel()
        self.batch_panel = BatchPanel(_writer_formats())
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.chat_panel, "Chat")
        self.tabs.addTab(self.batch_panel, "Batch")
        self.library_panel = LibraryPanel()
        self.tabs.addTab(self.library_panel, "Library")
        generation = self.settings.generation_settings
        self.chat = ChatController(self.chat_panel, self.worker, generation,
                                   self.gallery.selected_problems)
        self.batch = BatchController(self.batch_panel, self.worker, self.tasks,
                                     self.gallery.selected_paths, self.settings, generation)
        self.batch.job_ended.connect(self.check_unfinished_batch)
        self.library = LibraryController(self.library_panel, self.worker, self.tasks,
                                         lambda: theme.colours(self.settings.theme))
        self.library.show_paths.connect(self.show_in_gallery)
        self.library.forgotten.connect(self.check_unfinished_batch)
        self.library.files_deleted.connect(self.gallery.remove_paths)
        self.batch.captioned.connect(self.library.index_in_background)  # searchable by meaning too
        self.gallery.selection_changed.connect(self.chat.set_images)
        self.gallery.selection_changed.connect(self.batch.update_actions)
        self.gallery.selection_changed.connect(self._preview_selection)
        self.batch.reveal.connect(self.reveal)
        self.status = StatusBar()
        self.setStatusBar(self.status)
        for controller in (self.chat, self.batch, self.library):
            controller.status.connect(lambda text: self.status.showMessage(text, 6000))
        self.chat.answered.connect(self.status.set_timings)
        self.worker.kept_memory.connect(self.status.set_kept_memory)
        workspace = QWidget()
        ws_layout = QVBoxLayout(workspace)
        ws_layout.setContentsMargins(10, 10, 10, 0)
        ws_layout.setSpacing(8)
        ws_layout.addWidget(self.gallery)
        ws_layout.addWidget(self.tabs, 1)
        self.workspace = workspace
        self.tabs.currentChanged.connect(self._fit_gallery)
        self.batch_panel.setup.folder_radio.toggled.connect(self._fit_gallery)
        self.batch_panel.currentChanged.connect(self._fit_gallery)  # a failure shows in it
        self.no_model = NoModelPage()
        self.no_model.chooser.chosen.connect(self.choose_model)
        self.no_model.chooser.manage.connect(self.manage_models)
        self.model_manager: ModelManagerDialog | None = None
        self.pages = QStackedWidget()
        self.pages.addWidget(self.workspace)
        self.pages.addWidget(self.no_model)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.demo_banner)
        layout.addWidget(self.notice)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)
        self.resize(1100, 780)

    def _preview_selection(self, selected: list[str]) -> None:
        """One image selected: decode it larger (in the pool) for the chat's wide preview."""
        from .thumbnails import make_thumbnail

        preview = self.chat_panel.preview
        if len(selected) != 1:
            preview.set_image(None, None)
            self.chat_panel.fit_preview()
            return
        path = selected[0]

        def show(thumb: Any) -> None:
            if self.gallery.selected_paths() == [path]:  # still the selection
                preview.set_image(thumb.image, thumb.original)
                self.chat_panel.fit_preview()

        self.tasks.run(lambda: make_thumbnail(path, 1024), show)

    def _preview_tiling(self) -> None:
        """The loaded model's tiles at the detail in use, for the preview's grid."""
        info = self.model_info
        detail = self.settings.detail or (info.longest_edge if info else None)
        self.chat_panel.preview.set_tiling(info.tile_size if info else None, detail)

    def _fit_gallery(self) -> None:
        """The gallery strip (190 px) gives way on the Batch tab when the batch reads a folder:
        it is not the source there, and it pushed Start batch below the fold. The summary
        shows it again: a click on a failure selects the image in it."""
        folder_batch = (self.tabs.currentWidget() is self.batch_panel
                        and self.batch_panel.setup.folder_radio.isChecked()
                        and self.batch_panel.currentWidget() is not self.batch_panel.summary)
        self.gallery.setVisible(not folder_batch)

    def _show_settings_problems(self) -> None:
        if self.settings.problems:
            self.show_notice("Some saved settings could not be used and were reset to their "
                             "defaults (hover for details). Your settings file was kept.",
                             "\n".join(self.settings.problems))

    def show_notice(self, text: str, details: str = "") -> None:
        self.notice.setText(text)
        self.notice.setToolTip(details)
        self.notice.setVisible(bool(text))

    # --- crashes and unexpected errors ------------------------------------------------------

    def show_crash_report(self, report: str, log_dir: Path) -> None:
        """The previous session crashed: say so once, without blocking the window."""
        self.crash_dialog = previous_crash_dialog(report, log_dir, self)
        self.crash_dialog.show()

    def report_errors(self, log_dir: Path) -> None:
        """Uncaught exceptions logged by crashlog (a Qt slot that raised, a thread that died) are
        shown in a message: the first one of the session; later ones join its details."""
        self.log_dir = log_dir
        crashlog.add_listener(self._error_logged)

    def _error_logged(self, entry: str) -> None:
        self.unexpected_error.emit(entry)

    def _on_unexpected_error(self, entry: str) -> None:
        if self.error_dialog is not None:
            self._errors_added += 1
            if self._errors_added <= MORE_ERRORS_SHOWN:  # a slot failing on every paint: bounded
                self.error_dialog.append_details(entry)
            self.status.showMessage("Another unexpected error was written to errors.log", 8000)
            return
        self.error_dialog = error_dialog(entry, self.log_dir or Path(), self)
        self.error_dialog.show()

    # --- the library (opened by the worker, in its thread) ----------------------------------

    def library_call(self, call: Callable[[Any], Any], then: Callable[[Any], None]) -> None:
        """Run `call(library)` in the worker thread; `then(value)` on this thread (None when
        there is no library). For the start-up check; searches use the task pool instead."""
        job = LibraryJob(call=call)
        self._library_calls[job.job_id] = then
        self.worker.submit(job)

    def _on_library_result(self, job_id: int, value: object) -> None:
        then = self._library_calls.pop(job_id, None)
        if then is not None:
            then(value)

    def _on_library_problem(self, message: str) -> None:
        if not self._library_problem_shown:  # said once per session
            self._library_problem_shown = True
            self.show_notice(message.split(". ")[0] + ". Everything else works (hover for "
                             "details).", message)

    def check_unfinished_batch(self) -> None:
        self.library_call(lambda library: library.latest_unfinished_job(), self.batch.offer_resume)

    # --- the model -------------------------------------------------------------------------

    def start_model(self, requested: str | None = None, demo: bool = False) -> None:
        """At start-up: --demo, --model, the saved choice, or the installed default."""
        if demo:
            self.choose_model(str(paths.demo_model_dir()), True)
            return
        try:
            folder = paths.resolve_model(requested or self.settings.model)
        except paths.ModelNotFoundError as exc:
            self.show_no_model(str(exc) if (requested or self.settings.model) else "")
            return
        self.choose_model(str(folder), folder == paths.demo_model_dir(), remember=False)

    def show_no_model(self, error: str = "") -> None:
        self.no_model.show_error(error)
        self.no_model.chooser.refresh()
        self.pages.setCurrentWidget(self.no_model)

    def choose_model(self, folder: str, demo: bool = False, remember: bool = True) -> None:
        """Use this model from now on; it loads in the background."""
        self.demo = demo
        self.demo_banner.setVisible(demo)
        if remember and not demo:
            self.settings.model = folder
            self.save_settings()
        self.pages.setCurrentWidget(self.workspace)
        s = self.settings
        self.worker.set_model(ModelSpec(folder, self._variant_for(folder), s.provider, s.threads, demo))

    def _variant_for(self, folder: str) -> str | None:
        """The preferred variant when this model has it, else the automatic choice (said in
        the notice): a preference made for another model must not strand this one."""
        from .settings_dialog import model_variants

        wanted, have = self.settings.variant, model_variants(folder)
        if wanted is None or have is None or wanted in have:
            return wanted
        self.show_notice(f"{Path(folder).name} has no {wanted} variant ({', '.join(sorted(have))} "
                         "only): it is loaded with the automatic choice. Edit ▸ Preferences "
                         "offers its variants.")
        return None

    def _on_model_state(self, state: str, info: object, message: str, fallback: object) -> None:
        self.model_state = state
        self.model_info = info if isinstance(info, ModelInfo) else None
        self.status.set_model_state(state, self.model_info, message,
                                    fallback if isinstance(fallback, dict) else {})
        self._preview_tiling()
        if state == ERROR and not self.chat.busy and not self.batch.busy:
            self.show_no_model(f"The model could not be loaded: {message}")
        elif state == READY and message and not fallback:
            self.show_notice(f"Note: {message}")  # a fallback is said by the status bar

    def manage_models(self) -> None:
        """The model manager, window-modal (open(), not exec(): no nested event loop)."""
        if self.model_manager is None:
            wanted = lambda: self.worker._wanted.folder if self.worker._wanted else None  # noqa: E731
            self.model_manager = ModelManagerDialog(self.tasks, self.settings.variant, wanted, self)
            self.model_manager.chosen.connect(self._model_from_manager)
            self.model_manager.default_changed.connect(self._default_from_manager)
        else:
            self.model_manager.refresh()
        self.model_manager.open()

    def _model_from_manager(self, folder: str, demo: bool) -> None:
        self.choose_model(folder, demo)  # the status bar's model label says "Loading …"

    def _default_from_manager(self, folder: str, demo: bool) -> None:
        """A new default: the saved choice gives way to it, now and at the next start."""
        self.settings.model = None
        self.save_settings()
        self.choose_model(folder, demo, remember=False)
        self.status.showMessage(f"{Path(folder).name} is the default model now; loading it…", 6000)

    def preferences_dialog(self) -> SettingsDialog:
        """Preferences for the model in use (or being loaded): only its variants are offered."""
        wanted = self.worker._wanted
        return SettingsDialog(self.settings, self, model_folder=wanted.folder if wanted else None)

    def preferences(self) -> None:
        before = (self.settings.variant, self.settings.provider, self.settings.threads)
        if self.preferences_dialog().exec():
            self.apply_preferences(before)

    def apply_preferences(self, before: tuple[object, ...]) -> None:
        """After OK, from any page: a model that failed to load is tried again with the new
        settings (it stayed on "Choose a model" before), a loaded one reloads if they changed."""
        self.save_settings()
        self.apply_theme()
        self._preview_tiling()  # the detail may have changed
        self.worker.set_idle_unload(self.settings.idle_unload_minutes * 60_000)
        after = (self.settings.variant, self.settings.provider, self.settings.threads)
        failed = self.pages.currentWidget() is self.no_model
        if self.worker._wanted and (after != before or failed):
            self.choose_model(self.worker._wanted.folder, self.demo, remember=False)

    # --- images in ---------------------------------------------------------------------------

    def add_paths(self, given: list[str], select: bool = False) -> None:
        """Files and folders from a drop, a paste or a dialog: scanned off the GUI thread.
        select=True selects what was given (a paste: the user means that picture)."""
        from ..library.discover import discover_images

        if not given:
            return
        self.status.showMessage("Looking for images…", 3000)
        self.tasks.run(lambda: discover_images([Path(p) for p in given], recursive=True),
                       lambda found: self._paths_found(found, select),
                       lambda exc: self.status.showMessage(f"Could not open: {exc}", 8000))

    def _paths_found(self, found: tuple[list[Path], list[tuple[Path, str]]],
                     select: bool = False) -> None:
        from ..engine.images import IMAGE_EXTENSIONS, readable_extensions

        images, problems = found
        if self.gallery.isHidden():  # dropped on a folder batch: show where they went
            self.show_chat()
        added = self.gallery.add_images([str(p) for p in images])
        # searchable by meaning too (pasted pictures are temporary files: not those)
        pasted = self._paste_dir or "\0"
        self.library.index_in_background([p for p in added if not p.startswith(pasted)])
        for path, reason in problems:
            self.gallery.add_problem(str(path), reason)
        # A .heic without its decoder is added (its thumbnail says why it cannot be read, and
        # the status bar repeats it) but never counted as added nor selected.
        undecodable = IMAGE_EXTENSIONS - set(readable_extensions())
        usable = [p for p in added if Path(p).suffix.lower() not in undecodable]
        if select and images:
            self.gallery.select_paths([str(p) for p in images])
        elif usable and not self.gallery.selected_paths():
            self.gallery.select_paths(usable[:1])
        if usable or problems:
            noun = "image" if len(usable) == 1 else "images"
            extra = f", {len(problems)} could not be used" if problems else ""
            self.status.showMessage(f"Added {len(usable)} {noun}{extra}", 6000)

    def _unreadable(self, path: str, reason: str) -> None:
        """A thumbnail could not be decoded: say which file and why, not just a warning icon."""
        self.status.showMessage(f"Cannot read {Path(path).name}: {reason_for(path, reason)}", 12000)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        mime = event.mimeData()
        if any(u.isLocalFile() for u in mime.urls()) or mime.hasImage():
            event.acceptProposedAction()
            self.gallery.drop_zone.set_drag_active(True)
        else:
            event.ignore()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:  # noqa: N802
        self.gallery.drop_zone.set_drag_active(False)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        self.gallery.drop_zone.set_drag_active(False)
        mime = event.mimeData()
        local = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
        on_folder_setup = (self.gallery.isHidden()
                           and self.batch_panel.currentWidget() is self.batch_panel.setup)
        if len(local) == 1 and Path(local[0]).is_dir() and on_folder_setup:
            self.batch.set_folder(local[0])  # a folder batch is showing: caption this one
        elif local:
            self.add_paths(local)
        elif mime.hasImage():
            self._add_image_data(mime.imageData())
        event.acceptProposedAction()

    def paste(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        local = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime else []
        if local:
            self.add_paths(local)
        elif mime is not None and mime.hasImage():
            self._add_image_data(mime.imageData())
        else:
            self.status.showMessage("The clipboard holds no image", 5000)

    def _add_image_data(self, image: object) -> None:
        """A pasted picture becomes a PNG in the data folder (a temporary one would leave the
        library's chat pointing at a deleted file), named by its content so pasting the same
        picture twice keeps one copy; then it is shown and selected."""
        from ..library.atomic import atomic_write_bytes

        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        if image is None or not image.save(buffer, "PNG"):  # type: ignore[attr-defined]
            self.status.showMessage("The pasted image could not be read", 5000)
            return
        png = bytes(data.data())
        if self.persist:
            folder = paths.pasted_dir()
        else:  # the self-test writes nothing that outlives it
            self._paste_dir = self._paste_dir or tempfile.mkdtemp(prefix="smolvlm-paste-")
            folder = Path(self._paste_dir)
        target = folder / f"pasted-{hashlib.sha256(png).hexdigest()[:16]}.png"
        try:
            if not target.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, png)
        except OSError as exc:
            self.status.showMessage(f"The pasted image could not be kept in {folder}: {exc}", 8000)
            return
        self.add_paths([str(target)], select=True)

    def open_images(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open images", self.settings.last_folder or str(Path.home()), self.image_filter())
        self.add_paths(files)

    @staticmethod
    def image_filter() -> str:
        """File ▸ Open's filter: only the formats this computer decodes (a .heic offered
        without its decoder was "added" and then could not be read)."""
        from ..engine.images import readable_extensions

        return f"Images ({' '.join('*' + e for e in readable_extensions())});;All files (*)"

    def open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images",
                                                  self.settings.last_folder or str(Path.home()))
        if folder:
            self.settings.last_folder = folder
            self.add_paths([folder])

    def remove_selected(self) -> None:
        self.gallery.remove_selected()

    def select_all(self) -> None:
        self.gallery.list.selectAll()

    def show_in_gallery(self, given: list[str]) -> None:
        """A search hit's images: added if needed (checked off-thread), then selected."""
        from ..library.discover import discover_images

        def found(result: tuple[list[Path], list[tuple[Path, str]]]) -> None:
            images, problems = result
            self.gallery.add_images([str(p) for p in images])
            if images:
                self.gallery.select_paths([str(p) for p in images])
            if problems:
                self.status.showMessage(f"Not found any more: {problems[0][0]} ({problems[0][1]})", 8000)

        self.tasks.run(lambda: discover_images([Path(p) for p in given], recursive=False), found,
                       lambda exc: self.status.showMessage(f"Could not open: {exc}", 8000))

    def library_search(self) -> None:
        self.tabs.setCurrentWidget(self.library_panel)
        self.library_panel.search.setFocus()
        self.library_panel.search.selectAll()

    def more_like_selected(self) -> None:
        """Search by meaning for images that look like the first selected one."""
        selected = self.gallery.selected_paths()
        if not selected:
            self.status.showMessage("Select an image in the gallery first", 5000)
            return
        self.tabs.setCurrentWidget(self.library_panel)
        self.library.more_like(selected[0])

    def index_folder(self) -> None:
        self.tabs.setCurrentWidget(self.library_panel)
        self.library.index_folder()

    def forget_selected(self) -> None:
        self.library.forget_images(self, self.gallery.selected_paths())

    def forget_everything(self) -> None:
        self.library.forget_everything(self)

    def reveal(self, path: str) -> None:
        """Show a file from the batch summary in the gallery, selected."""
        if self.gallery.item_for(path) is None:
            self.gallery.add_images([path])
        self.gallery.select_paths([path])

    # --- actions forwarded to the panels ----------------------------------------------------

    def chat_send(self) -> None:
        self.tabs.setCurrentWidget(self.chat_panel)
        self.chat.send_typed()

    def stop(self) -> None:
        self.chat.stop()

    def chat_regenerate(self) -> None:
        self.chat.regenerate()

    def chat_copy(self) -> None:
        self.chat.copy_answer()

    def chat_clear(self) -> None:
        self.chat.clear()

    def show_chat(self) -> None:
        self.tabs.setCurrentWidget(self.chat_panel)

    def show_batch(self) -> None:
        self.tabs.setCurrentWidget(self.batch_panel)

    def show_library(self) -> None:
        self.tabs.setCurrentWidget(self.library_panel)

    def batch_start(self) -> None:
        self.show_batch()
        self.batch.start()

    def batch_pause(self) -> None:
        self.batch.toggle_pause()

    def batch_cancel(self) -> None:
        self.batch.cancel()

    def show_shortcuts(self) -> None:
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts", "Keyboard shortcuts",
                          QMessageBox.StandardButton.Close, self)
        box.setInformativeText(f"<pre>{shortcuts_text()}</pre>")
        box.exec()

    def about(self) -> None:
        QMessageBox.about(self, "About SmolVLM Desktop",
                          "SmolVLM Desktop understands images entirely offline, with SmolVLM on "
                          "ONNX Runtime. No image, question or answer leaves this computer.")

    # --- theme, geometry, settings ----------------------------------------------------------

    def set_theme(self, name: str) -> None:
        self.settings.theme = name
        self.apply_theme()
        self.save_settings()

    def apply_theme(self) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            self.resolved_theme = theme.apply(app, self.settings.theme)
            self.chat._render()  # the transcript's HTML carries palette colours
            self.library.restyle()

    def _system_scheme_changed(self) -> None:
        if self.settings.theme == "system":
            self.apply_theme()

    def _restore_geometry(self) -> None:
        if self.settings.window_geometry:
            self.restoreGeometry(QByteArray.fromBase64(self.settings.window_geometry.encode()))

    def save_settings(self) -> None:
        if not self.persist:
            return
        try:
            settings_mod.save(self.settings)
        except Exception as exc:  # noqa: BLE001 - OSError or the writer's OutputError
            self.status.showMessage(f"Settings could not be saved: {exc}", 8000)

    # --- closing -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Cancel what runs, wait for the worker thread and the pool, save: safe to call twice."""
        if self._shut_down:
            return
        self._shut_down = True
        crashlog.remove_listener(self._error_logged)
        for dialog in (self.crash_dialog, self.error_dialog):
            if dialog is not None:
                dialog.close()
        QGuiApplication.styleHints().colorSchemeChanged.disconnect(self._system_scheme_changed)
        self.worker.cancel_all()
        if self.model_manager is not None:
            self.model_manager.stop_task()  # a download stops here and resumes next time
        if self.thread is not None:
            self.thread.shutdown()
        self.tasks.shutdown()
        self.library.stop_indexing()  # after the image being embedded; what is done is kept
        self.worker.close_library()  # after the pool: a search may still have been using it
        self.settings.window_geometry = bytes(self.saveGeometry().toBase64()).decode()
        self.batch.remember_settings()
        self.save_settings()
        if self._paste_dir:
            shutil.rmtree(self._paste_dir, ignore_errors=True)
        self.closed.emit()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

