"""The Library tab's widgets: a search field and the hits (behaviour: library_controller.py).

    [ Search captions and chats…                          ]
    ┌ heron.png — Chat · SmolVLM-256M · 2026-11-22 ─────────┐
    │ …where is the **heron** standing…                      │
    │ /home/me/photos/heron.png                              │
    └────────────────────────────────────────────────────────┘

Each hit is a rich-text label inside a list row; clicking a row (or Enter on it) shows its
image in the gallery, selected. With an embedding model installed (search by meaning), a
result row also shows the image's thumbnail, its similarity and a "More like this" button.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QPushButton, QStackedWidget, QVBoxLayout, QWidget)

from ..library.db import SNIPPET_END, SNIPPET_START, SearchHit
from ..library.vectors import Match
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


def row_colours(colours: dict[str, str], selected: bool) -> tuple[dict[str, str], str]:
    """A result row's colours and the style of its marked words: a selected row sits on the
    accent colour, so every run takes the highlighted-text colour there."""
    if selected:
        on = colours["highlight_text"]
        return ({**colours, "text": on, "muted": on},
                f"color:{on}; font-weight:600; text-decoration:underline")
    return colours, f"background:{colours['accent_soft']}; color:{colours['text']}; font-weight:600"


def hit_html(hit: SearchHit, colours: dict[str, str], selected: bool = False) -> str:
    """One result. A selected row sits on the accent colour: then every run (name, date,
    path, match) takes the highlighted-text colour, or dark text vanished on #3451d1."""
    colours, mark = row_colours(colours, selected)
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


def match_html(match: Match, colours: dict[str, str], selected: bool = False) -> str:
    """A search-by-meaning result: name, how it was found, its caption (the matching words
    marked, as in a caption-word result), its folder. Selected: in the highlighted-text colour
    on the accent, like hit_html."""
    colours, mark = row_colours(colours, selected)
    how = " + ".join(w for w, on in (("meaning", match.by_meaning), ("caption words", match.by_words)) if on)
    meta = f"similarity {match.score:.2f} · {how}" if match.by_meaning else how
    caption = (snippet_html(match.snippet.replace("\n", " "), mark) if match.snippet else
               html.escape(match.caption.replace("\n", " ")[:200]) if match.caption else "")
    return (f'<div style="color:{colours["text"]}"><div><b>{html.escape(Path(match.path).name)}</b> '
            f'<span style="color:{colours["muted"]}">— {html.escape(meta)}</span></div>'
            + (f'<div style="margin-top:2px">{caption}</div>' if caption else "")
            + f'<div style="color:{colours["muted"]}; font-size:small">'
              f'{html.escape(str(Path(match.path).parent))}</div></div>')


class LibraryPanel(QWidget):
    """Search field on top; below it either a message (empty, no results) or the hits."""

    hit_chosen = Signal(object)  # SearchHit or Match
    more_like_this = Signal(str)  # an image path: find images that look like it
    index_folder = Signal()  # "Index a folder…" was clicked

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
        self.index_btn = QPushButton("Index a folder…")
        self.index_btn.setToolTip("Make every image in a folder searchable by what it shows")
        self.index_btn.clicked.connect(self.index_folder)
        self.index_btn.hide()  # shown when an embedding model is installed
        count_row = QHBoxLayout()
        count_row.addWidget(self.count, 1)
        count_row.addWidget(self.index_btn)
        self.pages = QStackedWidget()
        self.pages.addWidget(message_page)
        self.pages.addWidget(self.hits)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.setSpacing(8)
        layout.addWidget(self.search)
        layout.addLayout(count_row)
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
            elif label is not None and (text := label.findChild(QLabel, "MatchText")) is not None:
                text.setText(match_html(item.data(HIT_ROLE), self._colours, item.isSelected()))
    def show_matches(self, rows: list[tuple[Match, object]], colours: dict[str, str],
                     heading: str) -> None:
        """Results of a search by meaning: (Match, Thumb) rows, thumbnails already decoded."""
        self._colours = colours
        self.hits.clear()
        for match, thumb in rows:
            row = QWidget()
            line = QHBoxLayout(row)
            line.setContentsMargins(6, 4, 6, 4)
            picture = QLabel()
            picture.setFixedSize(64, 64)
            picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
            image = getattr(thumb, "image", None)
            if image is not None:
                picture.setPixmap(QPixmap.fromImage(image).scaled(
                    64, 64, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))
            text = QLabel(match_html(match, colours))
            text.setObjectName("MatchText")  # restyled when the row is selected
            text.setTextFormat(Qt.TextFormat.RichText)
            text.setWordWrap(True)
            for passive in (picture, text):  # clicks go to the row (show the image), not the labels
                passive.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
            more = QPushButton("More like this")
            more.setAccessibleName(f"More like {Path(match.path).name}")
            more.clicked.connect(lambda _=False, path=match.path: self.more_like_this.emit(path))
            line.addWidget(picture)
            line.addWidget(text, 1)
            line.addWidget(more)
            item = QListWidgetItem()
            item.setData(HIT_ROLE, match)
            item.setToolTip(match.path)
            item.setSizeHint(QSize(0, max(row.sizeHint().height(), 72)))
            self.hits.addItem(item)
            self.hits.setItemWidget(item, row)
        n = len(rows)
        self.count.setText(f"{heading}: {n} image{'s' if n != 1 else ''}, best first")
        self.pages.setCurrentIndex(1)

    def _chosen(self, item: QListWidgetItem) -> None:
        self.hit_chosen.emit(item.data(HIT_ROLE))
