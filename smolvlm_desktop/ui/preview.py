"""At wide window sizes: the selected image, larger, beside the chat, with the tiles the model
reads at the chosen detail drawn on it, so "detail" means something one can see.

The grid is the engine's own arithmetic (engine/processor.py: the image is scaled so its
longest edge is the detail, both sides rounded up to whole tiles, then cut into tiles; the
whole image squashed to one tile is read too). An image no larger than one tile is read whole.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .text import plural

WIDE = 1300  # the chat panel at least this wide shows the preview


def tile_grid(width: int, height: int, tile: int, longest: int) -> tuple[int, int]:
    """(rows, cols) of tiles the model reads for an image of this size; (0, 0) when the image
    is read whole as one tile."""
    from ..engine.processor import fit_longest_edge, fit_whole_tiles

    h, w = fit_longest_edge(height, width, longest)
    h, w = fit_whole_tiles(h, w, tile)
    if h <= tile and w <= tile:
        return 0, 0
    return h // tile, w // tile


class TileCanvas(QWidget):
    """The image scaled to fit, the tile grid over it."""

    def __init__(self) -> None:
        super().__init__()
        self.image: QImage | None = None
        self.grid = (0, 0)
        self.setMinimumSize(240, 240)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        if self.image is None or self.image.isNull():
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        box = QRectF((self.width() - size.width()) / 2, (self.height() - size.height()) / 2,
                     size.width(), size.height())
        painter.drawImage(box, self.image)
        rows, cols = self.grid
        if rows and cols:
            colour = QColor(self.palette().color(QPalette.ColorRole.Highlight))
            painter.setPen(QPen(colour, 2))
            for c in range(1, cols):
                x = box.left() + box.width() * c / cols
                painter.drawLine(int(x), int(box.top()), int(x), int(box.bottom()))
            for r in range(1, rows):
                y = box.top() + box.height() * r / rows
                painter.drawLine(int(box.left()), int(y), int(box.right()), int(y))
            painter.drawRect(box.adjusted(1, 1, -1, -1))
        painter.end()


class TilePreview(QWidget):
    """The canvas and a line saying what the model reads at this detail."""

    def __init__(self) -> None:
        super().__init__()
        self.setAccessibleName("Selected image and the tiles the model reads")
        self.canvas = TileCanvas()
        self.caption = QLabel()
        self.caption.setObjectName("Hint")
        self.caption.setWordWrap(True)
        self.original: tuple[int, int] | None = None
        self.tile: int | None = None
        self.longest: int | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.caption)

    @property
    def has_image(self) -> bool:
        return self.canvas.image is not None

    def set_image(self, image: QImage | None, original: tuple[int, int] | None) -> None:
        self.canvas.image, self.original = image, original
        self._update()

    def set_tiling(self, tile: int | None, longest: int | None) -> None:
        """The loaded model's tile edge and the detail in use (longest edge in pixels)."""
        self.tile, self.longest = tile, longest
        self._update()

    def _update(self) -> None:
        if self.original and self.tile and self.longest:
            self.canvas.grid = tile_grid(*self.original, self.tile, self.longest)
            rows, cols = self.canvas.grid
            self.caption.setText(
                f"At {self.longest} px the model reads {plural(rows * cols, 'tile')} of "
                f"{self.tile} px ({rows} × {cols}) and the whole image once more."
                if rows else f"At {self.longest} px the model reads this image whole, as one tile.")
        else:
            self.canvas.grid = (0, 0)
            self.caption.setText("")
        self.canvas.update()
