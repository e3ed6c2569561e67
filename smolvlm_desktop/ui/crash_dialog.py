"""The message after a crash (at the next start) or an unexpected error (during the session).

Non-modal on purpose: the user may carry on working and read it later. It says plainly that
nothing was sent anywhere (the app never uploads); "Copy details" and "Open log folder" let the
user share the report themselves if they choose to.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QStyle,
                               QToolButton, QVBoxLayout, QWidget)

CRASH_HEADLINE = "SmolVLM Desktop closed unexpectedly last time."
CRASH_BODY = ("The details were saved on this computer, in the log folder. Nothing was sent "
              "anywhere. If you report the problem, please include them.")
ERROR_HEADLINE = "Something went wrong."
ERROR_BODY = ("SmolVLM Desktop keeps running, but what you just did may not have finished. The "
              "error was written to errors.log in the log folder; nothing was sent anywhere. "
              "Later errors in this session are added to these details, without a new message.")


def reveal_folder(folder: Path) -> bool:
    """Open the folder in the system's file manager (a local file: URL, never the network)."""
    return QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))


class CrashDialog(QDialog):
    def __init__(self, headline: str, body: str, details: str, log_dir: Path,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("SmolVLM Desktop")
        self.setModal(False)
        self.log_dir = log_dir
        self.headline = QLabel(headline)
        self.headline.setObjectName("EmptyTitle")
        self.headline.setWordWrap(True)
        self.body = QLabel(body)
        self.body.setWordWrap(True)
        self.details = QPlainTextEdit(details)
        self.details.setReadOnly(True)
        self.details.setAccessibleName("Error details")
        # Wrapped: the sentence that says what happened is the longest line of a traceback,
        # and without wrapping it was cut off at the right edge.
        self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setMinimumHeight(220)
        self.details.hide()
        self.toggle = QToolButton()
        self.toggle.setText("Show details")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setAutoRaise(True)
        self.toggle.toggled.connect(self.show_details)
        self.copy_btn = QPushButton("Copy details")
        self.copy_btn.clicked.connect(self.copy_details)
        self.folder_btn = QPushButton("Open log folder")
        self.folder_btn.setToolTip(str(log_dir))
        self.folder_btn.clicked.connect(self.open_log_folder)
        self.close_btn = QPushButton("Close")
        self.close_btn.setObjectName("Primary")
        self.close_btn.setDefault(True)
        self.close_btn.clicked.connect(self.close)
        self._lay_out()

    def _lay_out(self) -> None:
        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning).pixmap(40, 40))
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        text = QVBoxLayout()
        text.setSpacing(8)
        text.addWidget(self.headline)
        text.addWidget(self.body)
        text.addStretch()  # wrapped labels stay at the top, beside the icon
        top = QHBoxLayout()
        top.setSpacing(14)
        top.addWidget(icon)
        top.addLayout(text, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy_btn)
        buttons.addWidget(self.folder_btn)
        buttons.addStretch()
        buttons.addWidget(self.close_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 18, 20, 16)
        layout.setSpacing(10)
        layout.addLayout(top)
        layout.addWidget(self.toggle, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.details, 1)
        layout.addLayout(buttons)
        self.setMinimumWidth(640)

    def show_details(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.toggle.setText("Hide details" if shown else "Show details")
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        if shown:
            self.resize(max(self.width(), 720), self.sizeHint().height())
        else:
            self.adjustSize()

    def append_details(self, more: str) -> None:
        """A later error of the same session: added to this message instead of a new one."""
        self.details.appendPlainText("\n" + more.rstrip())

    def copy_details(self) -> None:
        QGuiApplication.clipboard().setText(self.details.toPlainText())
        self.copy_btn.setText("Copied")
        QTimer.singleShot(2000, self.copy_btn, lambda: self.copy_btn.setText("Copy details"))

    def open_log_folder(self) -> None:
        if not reveal_folder(self.log_dir):
            self.body.setText(f"{self.body.text()}\n\nThe log folder is {self.log_dir}")


def previous_crash_dialog(report: str, log_dir: Path, parent: QWidget | None = None) -> CrashDialog:
    return CrashDialog(CRASH_HEADLINE, CRASH_BODY, report, log_dir, parent)


def error_dialog(entry: str, log_dir: Path, parent: QWidget | None = None) -> CrashDialog:
    return CrashDialog(ERROR_HEADLINE, ERROR_BODY, entry, log_dir, parent)
