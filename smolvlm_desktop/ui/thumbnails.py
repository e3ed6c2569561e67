"""Thumbnail decoding, meant to run in a pool thread: Pillow decodes (so heic/avif work when
Pillow can read them), we hand Qt a QImage (safe to build off the GUI thread; QPixmap is not)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image
from PySide6.QtGui import QImage

THUMB_EDGE = 256  # decoded size; shown smaller, sharp on high-DPI screens


@dataclass
class Thumb:
    path: str
    image: QImage | None  # None when the file could not be read
    info: str = ""  # "4032×3024 JPEG" for the tooltip
    error: str = ""  # why it could not be read, for the tooltip
    notes: list[str] = field(default_factory=list)
    original: tuple[int, int] | None = None  # width, height of the file's image, upright


def pil_to_qimage(image: Image.Image) -> QImage:
    """Copy an RGB(A) PIL image into a QImage that owns its pixels."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    fmt = QImage.Format.Format_RGBA8888 if image.mode == "RGBA" else QImage.Format.Format_RGB888
    data = image.tobytes()
    stride = len(image.mode) * image.width
    return QImage(data, image.width, image.height, stride, fmt).copy()


def make_thumbnail(path: str, edge: int = THUMB_EDGE) -> Thumb:
    """Decode one thumbnail; a bad file gives a Thumb with the reason, never an exception."""
    from ..engine.images import load_thumbnail
    from ..engine.types import EngineError

    try:
        loaded = load_thumbnail(path, edge)
    except EngineError as exc:
        return Thumb(path, None, error=str(exc))
    except OSError as exc:
        return Thumb(path, None, error=exc.strerror or str(exc))
    w, h = loaded.original_size
    return Thumb(path, pil_to_qimage(loaded.image), info=f"{w}×{h} {loaded.format}",
                 notes=list(loaded.notes), original=(w, h))
