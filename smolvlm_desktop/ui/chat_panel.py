"""The chat panel's widgets and layout (no jobs, no worker: see chat_controller.py)."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QKeyEvent, QPalette, QResizeEvent, QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton,
                               QTextBrowser, QVBoxLayout, QWidget)

from ..presets import PRESETS
from .preview import WIDE, TilePreview


class PromptEdit(QPlainTextEdit):
    """Multi-line question box: Enter sends, Shift+Enter starts a new line, Tab moves on to
    Send and Stop (a keyboard user could not reach them), Ctrl+Tab types a tab."""

    submitted = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setTabChangesFocus(True)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        if event.key() == Qt.Key.Key_Tab and event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.insertPlainText("\t")
            return
        super().keyPressEvent(event)


class ChatPanel(QWidget):
    """Transcript, one-click presets, the question box and the actions around an answer."""

    preset_clicked = Signal(str)  # preset key

    def __init__(self) -> None:
        super().__init__()
        self.context_label = QLabel()
        self.context_label.setObjectName("Hint")
        self.context_label.setWordWrap(True)
        self.transcript = QTextBrowser()
        self.transcript.setObjectName("Transcript")
        self.transcript.setAccessibleName("Conversation")
        self.transcript.setOpenLinks(False)
        # "Reading the image: 5 of 13 parts": the wait before an answer, shown as it goes
        self.reading_label = QLabel()
        self.reading_label.setObjectName("Hint")
        self.reading_label.setAccessibleName("Image reading progress")
        self.reading_bar = QProgressBar()
        self.reading_bar.setTextVisible(False)
        self.reading_bar.setFixedSize(160, 10)
        self.reading_bar.setAccessibleName("Image reading progress")
        self.prompt = PromptEdit()
        self.prompt.setObjectName("PromptEdit")
        self.prompt.setAccessibleName("Question")
        self.prompt.setPlaceholderText("Ask about the selected image… (Enter sends, Shift+Enter "
                                       "new line, Tab moves on)")
        self.prompt.setFixedHeight(64)
        self.send_btn = self._button("Send", "Send the question (Enter)", "Primary")
        self.stop_btn = self._button("Stop", "Stop the answer now (Esc)", "Danger")
        self.regen_btn = self._button("Regenerate", "Another answer to the last question, sampled; the "
                                      "earlier ones stay a click away (Ctrl+R)")
        self.prev_btn = self._button("‹", "Show the earlier answer to this question")
        self.prev_btn.setAccessibleName("Earlier answer")
        self.next_btn = self._button("›", "Show the later answer to this question")
        self.next_btn.setAccessibleName("Later answer")
        self.copy_btn = self._button("Copy answer", "Copy the last answer (Ctrl+Shift+C)")
        self.clear_btn = self._button("Clear", "Forget this conversation (Ctrl+L)")
        self.preset_buttons = {key: self._preset_button(key, label) for key, (label, _) in PRESETS.items()}
        self.preview = TilePreview()  # only at wide sizes, with one image selected
        self.preview.hide()
        self._lay_out()
        self.set_busy(False)
        self.show_reading(0, 0)
        self.set_alternatives(0, 1, False)

    def _button(self, text: str, tip: str, name: str = "") -> QPushButton:
        btn = QPushButton(text)
        btn.setToolTip(tip)
        btn.setAccessibleName(text)
        if name:
            btn.setObjectName(name)
        return btn

    def _preset_button(self, key: str, label: str) -> QPushButton:
        btn = self._button(label, f"Ask: {PRESETS[key][1]}", "Preset")
        btn.clicked.connect(lambda: self.preset_clicked.emit(key))
        return btn

    def _lay_out(self) -> None:
        presets = QHBoxLayout()
        presets.setSpacing(6)
        presets.addWidget(QLabel("Ask:"))
        for btn in self.preset_buttons.values():
            presets.addWidget(btn)
        presets.addStretch()
        entry = QHBoxLayout()
        entry.addWidget(self.prompt, 1)
        sends = QVBoxLayout()
        sends.addWidget(self.send_btn)
        sends.addWidget(self.stop_btn)
        entry.addLayout(sends)
        actions = QHBoxLayout()
        actions.addWidget(self.regen_btn)
        actions.addWidget(self.prev_btn)
        actions.addWidget(self.next_btn)
        actions.addWidget(self.copy_btn)
        actions.addStretch()
        actions.addWidget(self.clear_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.setSpacing(8)
        layout.addWidget(self.context_label)
        middle = QHBoxLayout()
        middle.addWidget(self.transcript, 3)
        middle.addWidget(self.preview, 2)
        layout.addLayout(middle, 1)
        reading = QHBoxLayout()
        reading.addWidget(self.reading_label)
        reading.addWidget(self.reading_bar)
        reading.addStretch(1)
        layout.addLayout(reading)
        layout.addLayout(actions)
        layout.addLayout(presets)
        layout.addLayout(entry)

    def fit_preview(self) -> None:
        """The large preview shows when there is room for it and one image to show."""
        self.preview.setVisible(self.width() >= WIDE and self.preview.has_image)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self.fit_preview()

    def set_alternatives(self, shown: int, count: int, busy: bool) -> None:
        """‹ › between the answers Regenerate gave to the last question (hidden with one)."""
        for button in (self.prev_btn, self.next_btn):
            button.setVisible(count > 1)
        self.prev_btn.setEnabled(not busy and shown > 0)
        self.next_btn.setEnabled(not busy and shown < count - 1)

    def set_busy(self, busy: bool, has_answer: bool = False) -> None:
        self.send_btn.setEnabled(not busy)
        for btn in self.preset_buttons.values():
            btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy)
        self.regen_btn.setEnabled(not busy and has_answer)
        self.copy_btn.setEnabled(has_answer)
        self.clear_btn.setEnabled(not busy)

    def show_reading(self, read: int, total: int, images: int = 1) -> None:
        """How far the vision graph is through the images' tiles; hidden when `total` is 0
        or all are read."""
        showing = 0 < total and read < total
        if showing:
            what = "the image" if images == 1 else f"the {images} images"
            self.reading_label.setText(f"Reading {what}: {read} of {total} parts")
            self.reading_bar.setRange(0, total)
            self.reading_bar.setValue(read)
        self.reading_label.setVisible(showing)
        self.reading_bar.setVisible(showing)

    # --- transcript ------------------------------------------------------------------------

    def show_turns(self, turns: list[tuple[str, str, str]]) -> None:
        """Render (role, text, note) turns; role 'user', 'assistant' or 'error'."""
        if not turns:
            self.transcript.setHtml(self._empty_html())
            return
        self.transcript.setHtml("".join(self._turn_html(*t) for t in turns))
        self.transcript.moveCursor(QTextCursor.MoveOperation.End)

    def begin_answer(self) -> None:
        """Add the heading of an answer that is about to stream in, each in a block of its own
        (inserted HTML merges into the current block: the heading stuck to the question)."""
        cursor = self._end_cursor()
        heading = QTextBlockFormat()
        heading.setTopMargin(14)  # as _heading_html's paragraph
        heading.setBottomMargin(2)
        cursor.insertBlock(heading, QTextCharFormat())
        name = QTextCharFormat()
        name.setFontWeight(QFont.Weight.Bold)
        name.setForeground(self.palette().color(QPalette.ColorRole.Link))
        cursor.insertText("SmolVLM", name)
        cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())  # the answer: plain text
        self.transcript.setTextCursor(cursor)

    def append_answer(self, text: str) -> None:
        self._end_cursor().insertText(text)
        self.transcript.ensureCursorVisible()

    def _end_cursor(self) -> QTextCursor:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        self.transcript.setTextCursor(cursor)
        return cursor

    def _colour(self, role: QPalette.ColorRole) -> str:
        return self.palette().color(role).name()

    def _heading_html(self, role: str, note: str) -> str:
        names = {"user": "You", "assistant": "SmolVLM", "error": "Could not answer"}
        colour = self._colour(QPalette.ColorRole.Link if role == "assistant" else QPalette.ColorRole.Text)
        if role == "error":
            colour = self._colour(QPalette.ColorRole.BrightText)
        extra = f' <span style="color:{self._colour(QPalette.ColorRole.PlaceholderText)}; font-weight:normal">· {html.escape(note)}</span>' if note else ""
        return f'<p style="margin-top:14px; margin-bottom:2px; color:{colour}"><b>{names[role]}</b>{extra}</p>'

    def _turn_html(self, role: str, text: str, note: str) -> str:
        body = html.escape(text).replace("\n", "<br>") or "<i>(no text)</i>"
        return self._heading_html(role, note) + f"<p style='margin-top:0'>{body}</p>"

    def _empty_html(self) -> str:
        muted = self._colour(QPalette.ColorRole.PlaceholderText)
        return (f"<div style='color:{muted}; margin-top:24px' align='center'>"
                "<p style='font-size:13pt'>Ask anything about the selected images.</p>"
                "<p>Pick a ready question below, or type your own. Answers are made on this "
                "computer; nothing is sent anywhere.</p></div>")
