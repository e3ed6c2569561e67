"""Open any image a user drops, safely: read-only, bounded, and with a specific reason on failure.

Pillow opens only the formats listed here (a file's extension is not trusted), its
decompression-bomb guard stays on and its warning counts as a refusal too, the size is read
before decoding, and very large JPEGs are reduced while decoding (draft mode) so that a 100 MP
photo never becomes a 300 MB array when the model needs 2048 px at most.
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .types import ImageError, LoadedImage

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
OPTIONAL_FORMATS: tuple[str, ...] = ("AVIF", "HEIF")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".avif", ".heic", ".heif", ".mpo",
})
_EXTENSION_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG",
    ".webp": "WEBP", ".gif": "GIF", ".bmp": "BMP", ".dib": "BMP", ".tif": "TIFF",
    ".tiff": "TIFF", ".avif": "AVIF", ".heic": "HEIF", ".heif": "HEIF", ".mpo": "MPO",
}


def allowed_formats() -> list[str]:
    """The allow-list, plus AVIF/HEIF when this Pillow (or pillow-heif) can read them."""
    Image.init()
    return [f for f in ALLOWED_FORMATS + OPTIONAL_FORMATS if f in Image.OPEN]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path.name}: file not found")
    if path.is_dir():
        raise ImageError(f"{path.name}: is a folder, not an image")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"{path.name}: cannot read: {exc.strerror}") from None
    if size == 0:
        raise ImageError(f"{path.name}: file is empty (0 bytes)")


def _open(path: Path) -> Image.Image:
    """Image.open with the allow-list, turning every failure into a specific ImageError."""
    try:
        return Image.open(path, formats=allowed_formats())
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path.name}: image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path.name}: not an image (or not a supported format)") from None
    except PermissionError:
        raise ImageError(f"{path.name}: permission denied") from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ImageError(f"{path.name}: permission denied") from None
        raise ImageError(f"{path.name}: cannot open: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with alpha composited on white and wide or odd modes mapped sensibly."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits by the actual range, not by clipping
        image = image.convert("I")
        lo, hi = image.getextrema()
        scale = 255 / (hi - lo) if hi > lo else 0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    elif image.mode == "F":
        lo, hi = image.getextrema()
        scale = 255 / (hi - lo) if hi > lo else 0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _orient(image: Image.Image, notes: list[str]) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block must not lose the picture."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on bad EXIF
        notes.append("EXIF orientation unreadable: shown as stored")
        return image


def _decode(path: Path, target_edge: int | None, thumbnail: bool) -> LoadedImage:
    _check_file(path)
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with _open(path) as image:
                original_size = image.size
                fmt = image.format or "unknown"
                expected = _EXTENSION_FORMATS.get(path.suffix.lower())
                if expected and expected != fmt and not (expected == "JPEG" and fmt == "MPO"):
                    notes.append(f"the file is {fmt} although its name ends in {path.suffix}")
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    notes.append(f"animated ({frames} frames): first frame used")
                    image.seek(0)
                if target_edge and fmt in ("JPEG", "MPO") and max(original_size) > target_edge:
                    image.draft("RGB", (target_edge, target_edge))
                    if not thumbnail:
                        notes.append(f"reduced while decoding from {original_size[0]}×{original_size[1]}")
                image.load()
                rgb = _to_rgb(_orient(image, notes))
                if thumbnail and target_edge:
                    rgb.thumbnail((target_edge, target_edge))
        except ImageError:
            raise
        except Image.DecompressionBombWarning as exc:
            raise ImageError(f"{path.name}: image too large: {exc}") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path.name}: image too large: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{path.name}: image is truncated or corrupt: {exc}") from None
    return LoadedImage(image=rgb, path=str(path), original_size=original_size, format=fmt,
                       notes=notes)


def load_image(path: str | Path, *, target_edge: int | None = 4096) -> LoadedImage:
    """Decode for the model: RGB, EXIF-oriented, large JPEGs reduced to about target_edge."""
    return _decode(Path(path), target_edge, thumbnail=False)


def load_thumbnail(path: str | Path, edge: int) -> LoadedImage:
    """Decode fast for the gallery: at most edge×edge pixels."""
    return _decode(Path(path), edge, thumbnail=True)


def probe_image(path: str | Path) -> tuple[str, tuple[int, int]]:
    """Format and size from the header, without decoding the pixels."""
    path = Path(path)
    _check_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with _open(path) as image:
                return image.format or "unknown", image.size
        except Image.DecompressionBombWarning as exc:
            raise ImageError(f"{path.name}: image too large: {exc}") from None

