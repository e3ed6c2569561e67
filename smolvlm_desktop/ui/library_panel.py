"""The Library tab's widgets: a search field and the hits (behaviour: library_controller.py).

    [ Search captions and chats…                          ]
    ┌ heron.png — Chat · SmolVLM-256M · 2026-11-22 ─────────┐
    │ …where is the **heron** standing…                      │
    │ /home/me/photos/heron.png                              │
    └────────────────────────────────────────────────────────┘

Each hit is a rich-text label inside a list row; clicking a row (or Enter on it) shows its
image in the gallery, selected.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (QLabel, QLineEdit, QListWidget, QListWidgetItem, QStackedWidget,
                               QVBoxLayout, QWidget)

from ..library.db import SNIPPET_END, SNIPPET_START, SearchHit
from . import theme
from .text import local_time

HIT_ROLE = Qt.ItemDataRole.UserRole
THUMB = QSize(48, 48)  # a result's thumbnail


def snippet_html(snippet: str, mark_style: str) -> str:
    """The library's snippet (the match between SNIPPET_START and SNIPPET_END) as HTML with
    the match highlighted. The text itself is escaped, so a caption can never inject markup,
    and its own brackets stay brackets: the marks are characters no caption contains."""
    out, inside = [], False
    for char in snippet:
        if char == SNIPPET_START:
            if not inside:
                out.append(f'<span style="{mark_style}">')
            inside = True
        elif char == SNIPPET_END:
            if inside:
                out.append("</span>")
            inside = False
        else:
            out.append(html.escape(char))
    if inside:
        out.append("</span>")
    return "".join(out).replace("\n", " ")


def hit_html(hit: SearchHit, colours: dict[str, str], selected: bool = False) -> str:
    """One result. A selected row sits on the accent colour: then every run (name, date,
    path, match) takes the highlighted-text colour, or dark text vanished on #3451d1."""
    if selected:
        on = colours["highlight_text"]
        colours = {**colours, "text": on, "muted": on}
        mark = f"color:{on}; font-weight:600; text-decoration:underline"
    else:
        mark = f"background:{colours['accent_soft']}; color:{colours['text']}; font-weight:600"
    name = Path(hit.path).name if hit.path else "(a chat without an image)"
    more = len(hit.paths) - 1
    if more > 0:
        name += f" and {more} more"
    kind = "Chat" if hit.kind == "chat" else "Caption"
    when = local_time(hit.created_at)
    meta = html.escape(f"{kind} · {hit.model} · {when}")
    where = html.escape(str(Path(hit.path).parent)) if hit.path else ""
    return (f'<div style="color:{colours["text"]}"><div><b>{html.escape(name)}</b> <span style="color:{colours["muted"]}">— {meta}</span></div>'
            f'<div style="margin-top:2px">{snippet_html(hit.snippet, mark)}</div>'
            f'<div style="color:{colours["muted"]}; font-size:small">{where}</div></div>')


class LibraryPanel(QWidget):
    """Search field on top; below it either a message (empty, no results) or the hits."""

    hit_chosen = Signal(object)  # SearchHit

    def __init__(self) -> None:
        super().__init__()
        self.search = QLineEdit()
        self.search.setObjectName("LibrarySearch")
        self.search.setAccessibleName("Search the library")
        self.search.setPlaceholderText("Search your captions and chats (Ctrl+F)…")
        self.search.setClearButtonEnabled(True)
        self.message_title = QLabel()
        self.message_title.setObjectName("EmptyTitle")
        self.message_title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message_title.setWordWrap(True)
        self.message = QLabel()
        self.message.setObjectName("EmptyBody")
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        message_page = QWidget()
        m = QVBoxLayout(message_page)
        m.addStretch()
        m.addWidget(self.message_title)
        m.addWidget(self.message)
        m.addStretch(2)
        self.hits = QListWidget()
        self.hits.setObjectName("SearchHits")
        self.hits.setAccessibleName("Search results")
        self.hits.setSpacing(2)
        self.hits.setVerticalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.hits.setIconSize(THUMB)  # drawn by the list under the label, left of its text
        self.hits.itemSelectionChanged.connect(self._restyle_selection)
        self._colours: dict[str, str] = {}
        self.hits.itemActivated.connect(self._chosen)
        self.hits.itemClicked.connect(self._chosen)
        self.count = QLabel()
        self.count.setObjectName("Hint")
        self.pages = QStackedWidget()
        self.pages.addWidget(message_page)
        self.pages.addWidget(self.hits)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.setSpacing(8)
        layout.addWidget(self.search)
        layout.addWidget(self.count)
        layout.addWidget(self.pages, 1)
        self.show_message("Search what the app has learned",
                          "Every chat answer and batch caption is kept in a private library on "
                          "this computer. Type a word to find the images it was about.")

    def show_message(self, title: str, body: str) -> None:
        self.hits.clear()
        self.count.setText("")
        self.message_title.setText(title)
        self.message.setText(body)
        self.pages.setCurrentIndex(0)

    def show_hits(self, hits: list[SearchHit], colours: dict[str, str]) -> None:
        self._colours = colours
        self.hits.clear()
        for hit in hits:
            label = QLabel(hit_html(hit, colours))
            label.setTextFormat(Qt.TextFormat.RichText)
            label.setWordWrap(True)
            label.setContentsMargins(8, 6, 8, 6)
            label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
            item = QListWidgetItem(theme.icon("image-placeholder"), "")
            item.setData(HIT_ROLE, hit)
            item.setToolTip("\n".join(hit.paths) or hit.path)
            width = max(self.hits.viewport().width() - 8, 200)
            height = label.heightForWidth(width)
            height = max(height if height > 0 else label.sizeHint().height(), THUMB.height() + 8)
            item.setSizeHint(QSize(0, height + 4))
            self.hits.addItem(item)
            self.hits.setItemWidget(item, label)
        n = len(hits)
        self.count.setText(f"{n} result{'s' if n != 1 else ''}: click one to show its image")
        self.pages.setCurrentIndex(1)

    def set_thumbnail(self, path: str, icon: QIcon) -> None:
        """The image of every result about `path` (decoded in the task pool)."""
        for row in range(self.hits.count()):
            item = self.hits.item(row)
            if item.data(HIT_ROLE).path == path:
                item.setIcon(icon)

    def _restyle_selection(self) -> None:
        """Selected rows in the highlighted-text colour, the others in the usual ones."""
        for row in range(self.hits.count()):
            item = self.hits.item(row)
            label = self.hits.itemWidget(item)
            if isinstance(label, QLabel):
                label.setText(hit_html(item.data(HIT_ROLE), self._colours, item.isSelected()))

    def _chosen(self, item: QListWidgetItem) -> None:
        self.hit_chosen.emit(item.data(HIT_ROLE))
