"""Choosing a model: the friendly empty state when none is installed, and the model manager.

"Download a model…" opens the model manager (model_manager.py), the only place that uses the
network; the same command for a terminal is shown too, with a folder picker and the bundled demo
model whose answers are noise.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QFileDialog, QFrame, QHBoxLayout,
                               QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout,
                               QWidget)

from .. import paths

PULL_COMMAND = "smolvlm-desktop models pull SmolVLM-256M-Instruct"


class ModelChooser(QFrame):
    """Installed models, the command to get one, a folder picker and the demo model."""

    chosen = Signal(str, bool)  # folder, is the demo model
    manage = Signal()  # open the model manager (download, import...)

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.setObjectName("EmptyState")
        self.heading = heading = QLabel(title)
        heading.setObjectName("EmptyTitle")
        heading.setWordWrap(True)
        self.body = text = QLabel(body)
        text.setObjectName("EmptyBody")
        text.setWordWrap(True)
        self.download_btn = QPushButton("Download a model…")
        self.download_btn.setObjectName("Primary")
        self.download_btn.setToolTip("Choose a SmolVLM model to download once (the only time the "
                                     "app uses the network)")
        self.download_btn.clicked.connect(self.manage)
        self.command = QLabel(PULL_COMMAND)
        self.command.setObjectName("Command")
        self.command.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        copy_btn = QPushButton("Copy command")
        copy_btn.clicked.connect(lambda: QGuiApplication.clipboard().setText(PULL_COMMAND))
        command_row = QHBoxLayout()
        command_row.addWidget(self.command, 1)
        command_row.addWidget(copy_btn)
        self.installed = QListWidget()
        self.installed.setAccessibleName("Installed models")
        self.installed.setMaximumHeight(150)
        self.installed.itemActivated.connect(self._use_selected)
        self.use_btn = QPushButton("Use this model")
        self.use_btn.setObjectName("Primary")
        self.use_btn.clicked.connect(self._use_selected)
        self.folder_btn = QPushButton("Open a model folder…")
        self.folder_btn.clicked.connect(self.pick_folder)
        self.demo_btn = QPushButton("Try the demo model (answers are random)")
        self.demo_btn.clicked.connect(lambda: self.chosen.emit(str(paths.demo_model_dir()), True))
        buttons = QHBoxLayout()
        buttons.addWidget(self.folder_btn)
        buttons.addWidget(self.demo_btn)
        buttons.addStretch()
        buttons.addWidget(self.use_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(28, 24, 28, 24)
        layout.setSpacing(12)
        layout.addWidget(heading)
        layout.addWidget(text)
        self.error_slot = layout.count()
        download_row = QHBoxLayout()
        download_row.addWidget(self.download_btn)
        download_row.addStretch()
        layout.addLayout(download_row)
        hint = QLabel("…or, in a terminal:")
        hint.setObjectName("Hint")
        layout.addWidget(hint)
        layout.addLayout(command_row)
        self.installed_title = QLabel("Installed models:")
        layout.addWidget(self.installed_title)
        layout.addWidget(self.installed)
        layout.addSpacing(4)
        layout.addLayout(buttons)
        self.refresh()

    def refresh(self) -> None:
        self.installed.clear()
        for folder in paths.installed_models():
            item = QListWidgetItem(folder.name)
            item.setData(Qt.ItemDataRole.UserRole, str(folder))
            item.setToolTip(str(folder))
            self.installed.addItem(item)
        has_any = self.installed.count() > 0
        for widget in (self.installed, self.installed_title, self.use_btn):
            widget.setVisible(has_any)
        if has_any:
            self.installed.setCurrentRow(0)

    def _use_selected(self) -> None:
        item = self.installed.currentItem()
        if item is not None:
            self.chosen.emit(item.data(Qt.ItemDataRole.UserRole), False)

    def pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a SmolVLM ONNX model folder")
        if folder:
            self.chosen.emit(folder, False)


NO_MODEL_TITLE = "No model is installed yet"
NO_MODEL_BODY = ("SmolVLM Desktop answers questions about your images with a vision-language model "
                 "that runs on this computer. Get the model once; after that everything works "
                 "offline and no image ever leaves the machine.")


class NoModelPage(QWidget):
    """The whole window's empty state when no model is installed (or the chosen one failed)."""

    def __init__(self) -> None:
        super().__init__()
        self.chooser = ModelChooser(NO_MODEL_TITLE, NO_MODEL_BODY)
        self.error = QLabel()
        self.error.setObjectName("ErrorText")
        self.error.setWordWrap(True)
        self.error.hide()
        self.chooser.layout().insertWidget(self.chooser.error_slot, self.error)
        self.chooser.setMaximumWidth(780)
        column = QVBoxLayout()
        column.addStretch(1)
        column.addWidget(self.chooser)
        column.addStretch(2)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(40, 30, 40, 30)
        layout.addStretch()
        layout.addLayout(column, 10)
        layout.addStretch()

    def show_error(self, text: str) -> None:
        """With an error the card says what went wrong; without, it is the first-run welcome."""
        self.error.setText(text)
        self.error.setVisible(bool(text))
        self.chooser.heading.setText("Choose a model" if text else NO_MODEL_TITLE)
        self.chooser.body.setText(NO_MODEL_BODY)
