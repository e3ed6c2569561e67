"""The gallery strip: thumbnails of the images the user gave, or a drop zone when empty.

Items appear at once with a placeholder; the thumbnail is decoded in the task pool and set
when it arrives. A file that could not be read keeps a warning icon and says why (tooltip,
accessible description), and is never sent to the model.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QFrame, QHBoxLayout, QLabel, QListWidget,
                               QListWidgetItem, QPushButton, QStackedWidget, QVBoxLayout)

from . import theme
from .tasks import TaskRunner
from .thumbnails import Thumb, make_thumbnail

PATH_ROLE = Qt.ItemDataRole.UserRole
ERROR_ROLE = Qt.ItemDataRole.UserRole + 1
SIZE_ROLE = Qt.ItemDataRole.UserRole + 2  # QSize of the decoded, upright thumbnail
ICON = QSize(112, 112)


def square_icon(image: QImage) -> QIcon:
    """Centre a thumbnail on a square transparent canvas, so every label lines up, and use
    it for the selected state too (Qt would otherwise tint the photo with the selection colour)."""
    edge = max(image.width(), image.height(), ICON.width())  # a tiny image is not enlarged,
    # but sits on a full-size square: its label lines up with the others
    canvas = QPixmap(edge, edge)
    canvas.fill(Qt.GlobalColor.transparent)
    painter = QPainter(canvas)
    painter.drawImage((edge - image.width()) // 2, (edge - image.height()) // 2, image)
    painter.end()
    icon = QIcon()
    icon.addPixmap(canvas, QIcon.Mode.Normal)
    icon.addPixmap(canvas, QIcon.Mode.Selected)
    return icon


FORMAT_NAMES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "TIFF": "TIFF", "GIF": "GIF",
                "BMP": "BMP", "AVIF": "AVIF", "HEIF": "HEIC"}


def readable_formats_text() -> str:
    """"JPEG, PNG, WebP, TIFF, GIF, BMP and AVIF": what File ▸ Open accepts on this computer."""
    from ..engine.images import allowed_formats

    names = [FORMAT_NAMES.get(f, f) for f in allowed_formats()]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


class DropZone(QFrame):
    """What an empty gallery shows: where to drop, what else works, the privacy promise."""

    open_images = Signal()
    open_folder = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("DropZone")
        title = QLabel("Drop photos or a folder here")
        title.setObjectName("EmptyTitle")
        self.body = body = QLabel(f"…or paste an image with Ctrl+V. {readable_formats_text()} "
                                  "work; nothing you open ever leaves this computer.")
        body.setObjectName("EmptyBody")
        body.setWordWrap(True)
        body.setAlignment(Qt.AlignmentFlag.AlignCenter)
        images_btn = QPushButton("Open images…")
        images_btn.setObjectName("Primary")
        images_btn.clicked.connect(self.open_images)
        folder_btn = QPushButton("Open folder…")
        folder_btn.clicked.connect(self.open_folder)
        buttons = QHBoxLayout()
        buttons.addStretch()
        buttons.addWidget(images_btn)
        buttons.addWidget(folder_btn)
        buttons.addStretch()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 18, 24, 18)
        layout.addStretch()
        layout.addWidget(title, alignment=Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(body)
        layout.addLayout(buttons)
        layout.addStretch()

    def set_drag_active(self, active: bool) -> None:
        self.setProperty("dragActive", active)
        self.style().unpolish(self)
        self.style().polish(self)


class GalleryStrip(QStackedWidget):
    """A horizontal strip of thumbnails; page 0 is the drop zone shown while it is empty."""

    selection_changed = Signal(list)  # selected paths that can be read, in gallery order
    unreadable = Signal(str, str)  # path, reason: a thumbnail could not be decoded
    open_images = Signal()
    open_folder = Signal()

    def __init__(self, tasks: TaskRunner) -> None:
        super().__init__()
        self.tasks = tasks
        self.drop_zone = DropZone()
        self.drop_zone.open_images.connect(self.open_images)
        self.drop_zone.open_folder.connect(self.open_folder)
        self.list = self._make_list()
        self.addWidget(self.drop_zone)
        self.addWidget(self.list)
        self.setMinimumHeight(176)
        self.setMaximumHeight(196)

    def _make_list(self) -> QListWidget:
        lst = QListWidget()
        lst.setObjectName("Gallery")
        lst.setAccessibleName("Image gallery")
        lst.setViewMode(QListWidget.ViewMode.IconMode)
        lst.setFlow(QListWidget.Flow.LeftToRight)
        lst.setWrapping(False)
        lst.setMovement(QListWidget.Movement.Static)
        lst.setIconSize(ICON)
        lst.setGridSize(QSize(ICON.width() + 28, ICON.height() + 40))
        lst.setUniformItemSizes(True)
        lst.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        lst.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        lst.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        lst.itemSelectionChanged.connect(self._emit_selection)
        return lst

    # --- adding and removing ---------------------------------------------------------------

    def add_images(self, paths: list[str]) -> list[str]:
        """Add new paths (duplicates ignored), start their thumbnails; returns those added."""
        added = []
        for path in paths:
            if self.item_for(path) is not None:
                continue
            item = QListWidgetItem(theme.icon("image-placeholder"), Path(path).name)
            item.setData(PATH_ROLE, path)
            item.setToolTip(f"{path}\nLoading…")
            self.list.addItem(item)
            added.append(path)
            self.tasks.run(lambda p=path: make_thumbnail(p), self._thumbnail_ready)
        self._update_page()
        return added

    def add_problem(self, path: str, reason: str) -> None:
        """A dropped file that is not an image we can use: shown, marked, explained."""
        item = self.item_for(path)
        if item is None:
            item = QListWidgetItem(Path(path).name)
            item.setData(PATH_ROLE, path)
            self.list.addItem(item)
        self._mark_failed(item, reason)
        self._update_page()

    def remove_selected(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self._update_page()
        self._emit_selection()

    def remove_paths(self, paths: list[str]) -> None:
        """Take these out of the strip (their files were deleted: forgotten pasted pictures)."""
        for path in paths:
            item = self.item_for(path)
            if item is not None:
                self.list.takeItem(self.list.row(item))
        self._update_page()
        self._emit_selection()

    def clear(self) -> None:
        self.list.clear()
        self._update_page()

    def _thumbnail_ready(self, thumb: Thumb) -> None:
        item = self.item_for(thumb.path)
        if item is None:  # removed while its thumbnail was decoding
            return
        if thumb.image is None:
            self._mark_failed(item, thumb.error)
            self._emit_selection()
            self.unreadable.emit(thumb.path, thumb.error)
            return
        item.setIcon(square_icon(thumb.image))
        item.setData(SIZE_ROLE, thumb.image.size())
        tip = [thumb.path, thumb.info] + thumb.notes
        item.setToolTip("\n".join(t for t in tip if t))

    def _mark_failed(self, item: QListWidgetItem, reason: str) -> None:
        item.setData(ERROR_ROLE, reason)
        item.setIcon(theme.icon("broken-image"))
        item.setText(f"⚠ {Path(item.data(PATH_ROLE)).name}")
        item.setToolTip(f"{item.data(PATH_ROLE)}\nCannot be read: {reason}")
        item.setData(Qt.ItemDataRole.AccessibleDescriptionRole, f"cannot be read: {reason}")

    def _update_page(self) -> None:
        self.setCurrentIndex(1 if self.list.count() else 0)

    # --- queries ---------------------------------------------------------------------------

    def item_for(self, path: str) -> QListWidgetItem | None:
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(PATH_ROLE) == path:
                return item
        return None

    def paths(self, readable_only: bool = True) -> list[str]:
        items = [self.list.item(r) for r in range(self.list.count())]
        return [i.data(PATH_ROLE) for i in items if not (readable_only and i.data(ERROR_ROLE))]

    def selected_paths(self) -> list[str]:
        items = [self.list.item(r) for r in range(self.list.count())]
        return [i.data(PATH_ROLE) for i in items if i.isSelected() and not i.data(ERROR_ROLE)]

    def selected_problems(self) -> list[tuple[str, str]]:
        """(path, reason) of the selected images that cannot be read (left out of a question)."""
        items = [self.list.item(r) for r in range(self.list.count())]
        return [(i.data(PATH_ROLE), i.data(ERROR_ROLE)) for i in items
                if i.isSelected() and i.data(ERROR_ROLE)]

    def error_for(self, path: str) -> str | None:
        item = self.item_for(path)
        return item.data(ERROR_ROLE) if item is not None else None

    def select_paths(self, paths: list[str]) -> None:
        self.list.clearSelection()
        for path in paths:
            item = self.item_for(path)
            if item is not None:
                item.setSelected(True)
                self.list.scrollToItem(item)

    def _emit_selection(self) -> None:
        self.selection_changed.emit(self.selected_paths())
