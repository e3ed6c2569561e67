"""Model ▸ Manage models…: every catalog and installed model, with Download (progress, Cancel),
Import folder…, Remove… and Set as default.

Downloading is the app's only network access, and it happens here, only when the user clicks
Download: `hub.pull` runs in a HubTask thread (worker.py), never on the GUI thread and never
at start-up; it downloads the published weights and builds the app's graphs from them, and its
progress says which graph it is writing. Listing (folder sizes), removing and setting the default are disk work and run in
the task pool. After a download, an import or a default change the window loads that model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QFileDialog, QHBoxLayout, QHeaderView,
                               QLabel, QMessageBox, QProgressBar, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from ..worker import HubTask
from .tasks import TaskRunner

STATUS_ROLE = Qt.ItemDataRole.UserRole
STATE_TEXT = {"installed": "Installed", "partial": "Partly downloaded", "available": "Not downloaded",
              "no-onnx": "No ONNX release", "bundled": "Bundled demo (random answers)"}
_SIZE_RE = re.compile(r"([\d.]+)\s*([KMG]B)")
_UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9}


def human_size(nbytes: float | None) -> str:
    if nbytes is None:
        return ""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= factor:
            return f"{nbytes / factor:.1f} {unit}" if nbytes < 10 * factor else f"{nbytes / factor:.0f} {unit}"
    return f"{int(nbytes)} B"


def download_size(name: str, variant: str) -> tuple[float, bool] | None:
    """About how much a pull of this variant downloads, from the catalog: (bytes, whether every
    file's size is known); None when no size at all is known."""
    from .. import hub

    try:
        entry = hub.catalog_entry(name)
        files = entry.graph_files(variant)
    except hub.HubError:
        return None
    total, complete = 0.0, True
    for rel in files:
        known = entry.known_files.get(rel) or {}
        if known.get("size"):
            total += known["size"]
            continue
        match = _SIZE_RE.search(str(known.get("approx_size") or ""))
        if match:
            total += float(match.group(1)) * _UNITS[match.group(2)]
        else:
            complete = False
    return (total, complete) if total else None


def download_text(name: str, variant: str) -> str:
    """The Size column of a model not downloaded yet (it was blank whenever one file's size
    was missing from the catalog)."""
    size = download_size(name, variant)
    if size is None:
        return "size known when the download starts"
    total, complete = size
    return f"≈ {human_size(total)} to download" if complete else f"over {human_size(total)} to download"


_PARAMS_RE = re.compile(r"^(\d+(?:\.\d+)?[MB])\b")


def display_name(status: Any) -> str:
    """'SmolVLM-Instruct (2.2B)': a name without its size gets the one its summary starts with."""
    if re.search(r"\d+(?:\.\d+)?[MB]\b", status.name):
        return status.name
    match = _PARAMS_RE.match(status.summary or "")
    return f"{status.name} ({match.group(1)})" if match else status.name


def folder_size(folder: Path | None) -> int | None:
    """Bytes on disk under a model folder (for rows the listing gives no size)."""
    if folder is None or not Path(folder).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def list_with_sizes() -> tuple[list[Any], dict[str, int | None]]:
    """hub.list_models() and each usable model's size on disk (run in the task pool)."""
    from .. import hub

    rows = hub.list_models()
    sizes = {r.name: r.size_bytes if r.size_bytes is not None else folder_size(r.folder)
             for r in rows if r.state in ("installed", "bundled", "partial")}
    return rows, sizes


class ModelManagerDialog(QDialog):
    """A table of models and the actions on the selected one."""

    chosen = Signal(str, bool)  # load this folder now (is it the demo model)
    default_changed = Signal(str, bool)  # the new default's folder: the window switches to it

    def __init__(self, tasks: TaskRunner, variant: str | None = None,
                 in_use: Callable[[], str | None] = lambda: None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(760, 500)
        self.tasks, self.wanted_variant, self.in_use = tasks, variant, in_use
        self.task: HubTask | None = None
        self.task_name = ""
        self.rows: list[Any] = []
        self._error_row: str | None = None  # the row the error shown is about
        self._build()
        self.refresh()

    # --- building ----------------------------------------------------------------------------

    def _build(self) -> None:
        title = QLabel("Models")
        title.setObjectName("EmptyTitle")
        intro = QLabel("Models live on this computer. Downloading one is the only time SmolVLM "
                       "Desktop uses the network, and only when you click Download.")
        intro.setObjectName("Hint")
        intro.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setAccessibleName("Models")
        self.table.setHorizontalHeaderLabels(["Model", "State", "Size"])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.itemDoubleClicked.connect(lambda *_: self.use_selected())
        self.summary = QLabel()
        self.summary.setObjectName("Hint")
        self.summary.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Download progress")
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress_text = QLabel()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setObjectName("Danger")
        self.cancel_btn.setToolTip("Stop the download; what is downloaded is kept and the next "
                                   "Download goes on from there")
        self.cancel_btn.clicked.connect(self.cancel_task)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_btn)
        self.progress_box = QWidget()
        box = QVBoxLayout(self.progress_box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.progress_text)
        box.addLayout(progress_row)
        self.progress_box.hide()
        self.error = QLabel()
        self.error.setObjectName("ErrorText")
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.hide()
        self.download_btn = QPushButton("Download")
        self.download_btn.setObjectName("Primary")
        self.download_btn.clicked.connect(self.download_selected)
        self.import_btn = QPushButton("Import folder…")
        self.import_btn.setToolTip("Install a SmolVLM ONNX folder copied from elsewhere (it is "
                                   "copied; the original stays where it is)")
        self.import_btn.clicked.connect(self.pick_import)
        self.remove_btn = QPushButton("Remove…")
        self.remove_btn.clicked.connect(self.remove_selected)
        self.default_btn = QPushButton("Set as default")
        self.default_btn.setToolTip("Use this model from now on, also when the app starts")
        self.default_btn.clicked.connect(self.default_selected)
        self.use_btn = QPushButton("Use now")
        self.use_btn.clicked.connect(self.use_selected)
        self.close_btn = QPushButton("Close")
        self.close_btn.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        for button in (self.download_btn, self.import_btn, self.remove_btn, self.default_btn):
            buttons.addWidget(button)
        buttons.addStretch()
        buttons.addWidget(self.use_btn)
        buttons.addWidget(self.close_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(18, 16, 18, 16)
        layout.setSpacing(10)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary)
        layout.addWidget(self.progress_box)
        layout.addWidget(self.error)
        layout.addLayout(buttons)

    # --- the list ----------------------------------------------------------------------------

    def refresh(self, select: str | None = None) -> None:
        """Read the models again (folder sizes: in the task pool)."""
        from .. import hub

        current = select or (self.selected().name if self.selected() else None)
        self.tasks.run(list_with_sizes, lambda found: self._show(*found, current),
                       lambda exc: self.show_error(f"Could not list the models: {exc}"))

    def _show(self, rows: list[Any], sizes: dict[str, int | None], select: str | None) -> None:
        self.rows = rows
        self.table.setRowCount(len(rows))
        for i, status in enumerate(rows):
            state = STATE_TEXT.get(status.state, status.state)
            if status.is_default:
                state += " · default"
            if getattr(status, "kind", "chat") == "embedding":
                state += " · for search"  # not a chat model: never used for chat; its default is search's
            if status.state in ("installed", "bundled"):
                size = f"{human_size(sizes.get(status.name))} on disk"
            elif status.state in ("available", "partial"):
                size = download_text(status.name, self.variant_for(status))
            else:
                size = ""
            cells = [display_name(status), state, size]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(STATUS_ROLE, status)
                item.setToolTip(status.summary or str(status.folder or ""))
                self.table.setItem(i, column, item)
        names = [r.name for r in rows]
        row = names.index(select) if select in names else 0 if rows else -1
        if row >= 0:
            self.table.selectRow(row)
        self._update_buttons()

    def selected(self) -> Any:
        items = self.table.selectedItems()
        return items[0].data(STATUS_ROLE) if items else None

    def variant_for(self, status: Any) -> str:
        from .. import hub

        variants = tuple(status.variants or ())
        if self.wanted_variant and (not variants or self.wanted_variant in variants):
            return self.wanted_variant
        default = hub.default_variant(getattr(status, "kind", "chat"))  # embedding: quantized
        if not variants or default in variants:
            return default
        return variants[0]

    def _update_buttons(self) -> None:
        status = self.selected()
        state = status.state if status else ""
        busy = self.task is not None
        self.download_btn.setText("Resume download" if state == "partial" else "Download")
        self.download_btn.setEnabled(not busy and state in ("available", "partial"))
        self.remove_btn.setEnabled(not busy and state in ("installed", "partial"))
        usable = state in ("installed", "bundled") and getattr(status, "kind", "chat") == "chat"
        # an embedding model can be made the one search by meaning uses, never used for chat
        installed = state in ("installed", "bundled")
        self.default_btn.setEnabled(not busy and installed and not status.is_default)
        self.use_btn.setEnabled(not busy and usable)
        self.import_btn.setEnabled(not busy)
        text = ""
        if status is not None:
            text = status.summary[:1].upper() + status.summary[1:] if status.summary else ""
            if status.licence and status.state != "installed":
                asks = " (you are asked before the download)" if status.ask_before_download else ""
                text += ("\n" if text else "") + f"Licence: {status.licence}{asks}"
            if status.folder:
                text += ("\n" if text else "") + str(status.folder)
        self.summary.setText(text)

    def show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.setVisible(bool(text))
        selected = self.selected()
        self._error_row = selected.name if selected is not None and text else None

    def _selection_changed(self) -> None:
        """Another row: an error about the previous one goes (it stayed, as if about this one)."""
        selected = self.selected()
        if self.error.text() and (selected is None or selected.name != self._error_row):
            self.show_error("")
        self._update_buttons()

    # --- actions -----------------------------------------------------------------------------

    def download_selected(self) -> None:
        from .. import hub

        status = self.selected()
        if status is None or self.task is not None:
            return
        name, variant = status.name, self.variant_for(status)
        accepted = status.ask_before_download and self._accepts_licence(name)
        if status.ask_before_download and not accepted:
            return
        self._start(f"Downloading {name} ({variant})",
                    lambda progress, cancel: hub.pull(name, variant, progress=progress, cancel=cancel,
                                                      accept_licence=accepted),
                    name)

    def _accepts_licence(self, name: str) -> bool:
        """Ask, before the first download of a model whose licence wants consent (FastVLM's)."""
        from .. import hub

        question = hub.licence_question(hub.catalog_entry(name))
        box = QMessageBox(QMessageBox.Icon.Question, "Accept the licence?",
                          f"{question}\n\nAccept it and download {name}?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return box.exec() == QMessageBox.StandardButton.Yes

    def pick_import(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Import a SmolVLM model folder (ONNX files, or a checkpoint with model.safetensors to build)")
        if folder:
            self.import_folder(folder)

    def import_folder(self, folder: str) -> None:
        from .. import hub

        if self.task is not None:
            return
        self._start(f"Importing {Path(folder).name}",
                    lambda progress, cancel: hub.import_folder(folder, progress=progress),
                    Path(folder).name, cancellable=False)

    def _start(self, what: str, fn: Callable[..., Any], name: str, cancellable: bool = True) -> None:
        self.show_error("")
        self.task_name = name
        self.task = HubTask(fn)
        self.task.progress.connect(self._on_progress)
        self.task.succeeded.connect(self._on_succeeded)
        self.task.failed.connect(self._on_failed)
        self.task.cancelled.connect(self._on_cancelled)
        self.task.finished.connect(self._on_task_finished)
        self.progress.setValue(0)
        self.progress.setRange(0, 0)  # until the first report says how much there is
        self.progress_text.setText(f"{what}: connecting…" if cancellable else f"{what}…")
        self.progress_text.setProperty("what", what)
        self.cancel_btn.setVisible(cancellable)
        self.cancel_btn.setEnabled(True)
        self.progress_box.show()
        self._update_buttons()
        self.task.start()

    def _on_progress(self, p: Any) -> None:
        if p.total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * p.done / p.total))
        what = self.progress_text.property("what")
        if getattr(p, "stage", "download") == "build":  # graphs written from the downloaded weights
            self.progress_text.setText(f"{what}: building the graphs here, step {p.done} of {p.total} ({p.file})")
            return
        self.progress_text.setText(
            f"{what}: {human_size(p.done) or '0 B'} of {human_size(p.total)} "
            f"(file {min(p.files_done + 1, p.files_total)} of {p.files_total}: {Path(p.file).name})")

    def _on_succeeded(self, folder: object) -> None:
        self.progress_text.setProperty("done", True)
        self.refresh(select=Path(str(folder)).name)
        self.chosen.emit(str(folder), False)

    def _on_failed(self, message: str) -> None:
        message = message.replace("use `models import`", "use Import folder…")  # the CLI's words
        self.show_error(message[:1].upper() + message[1:])

    def _on_cancelled(self) -> None:
        self.show_error("Download cancelled. What was downloaded is kept: Resume download goes "
                        "on from there, Remove… deletes it.")
        self.refresh()

    def _on_task_finished(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.wait()
            task.deleteLater()
        self.progress_box.hide()
        self._update_buttons()

    def cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel.set()
            self.cancel_btn.setEnabled(False)
            self.progress_text.setText("Cancelling…")

    def stop_task(self) -> None:
        """Cancel and wait (closing the dialog or the window)."""
        if self.task is not None:
            self.task.stop()

    def remove_selected(self) -> None:
        from .. import hub

        status = self.selected()
        if status is None or status.state not in ("installed", "partial"):
            return
        if status.folder is not None and self.in_use() == str(status.folder):
            self.show_error(f"{status.name} is the model in use. Choose another model first, "
                            "then remove this one.")
            return
        what = "its unfinished download" if status.state == "partial" else "its files"
        size = f" ({human_size(status.size_bytes)})" if status.size_bytes else ""
        box = QMessageBox(QMessageBox.Icon.Warning, "Remove model?",
                          f"Remove {status.name}? This deletes {what}{size} from this computer; "
                          "you can download it again later.", QMessageBox.StandardButton.Cancel, self)
        remove = box.addButton("Remove", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() is not remove:
            return
        self.show_error("")
        self.tasks.run(lambda: hub.remove(status.name), lambda _: self.refresh(),
                       lambda exc: self.show_error(f"Could not remove {status.name}: {exc}"))

    def default_selected(self) -> None:
        from .. import hub

        status = self.selected()
        if status is None or status.state not in ("installed", "bundled"):
            return
        folder, demo = str(status.folder), status.state == "bundled"

        def done(kind: object) -> None:
            self.refresh(select=status.name)  # its row says "default · for search"
            if kind != "embedding":  # search by meaning picks an embedding model up by itself
                self.default_changed.emit(folder, demo)

        self.tasks.run(lambda: hub.set_default(status.name), done,
                       lambda exc: self.show_error(f"Could not set the default: {exc}"))

    def use_selected(self) -> None:
        status = self.selected()
        if status is not None and status.state in ("installed", "bundled"):
            self.chosen.emit(str(status.folder), status.state == "bundled")
            self.accept()  # done here: the window loads it

    # --- closing -----------------------------------------------------------------------------

    def reject(self) -> None:
        self.stop_task()  # a download stops; the next Download resumes it
        super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        self.stop_task()
        super().closeEvent(event)

