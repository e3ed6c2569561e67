"""Open any image a user drops, safely: read-only, bounded, and with a specific reason on failure.

Why each rule exists:

* Pillow opens only the formats in the allow-list (a file's extension is not trusted, and every
  extra decoder is extra attack surface for files from strangers).
* The decompression-bomb guard stays on, and its *warning* (between 1x and 2x
  ``Image.MAX_IMAGE_PIXELS``) is refused too: a 150 MP PNG would need about 450 MB as RGB. The
  limit is never changed globally, and because ``warnings.catch_warnings`` is not thread-safe
  (the gallery and the worker decode at the same time) the pixel count is also checked by hand.
* The size is read from the header before any pixel is decoded, and very large JPEGs are
  reduced while decoding (draft mode), so a 100 MP photo never becomes a 300 MB array when
  the model needs 2048 px at most.
* Every failure becomes an :class:`ImageError` naming the file and the reason, never a
  traceback: one bad file in a folder of 50,000 must not stop a batch.
* A file is opened once, through a ``with`` block, so no handle outlives the call.
"""

from __future__ import annotations

import functools
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .types import ImageError, LoadedImage

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
OPTIONAL_FORMATS: tuple[str, ...] = ("AVIF", "HEIF")  # used when this Pillow can read them
IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".avif", ".heic", ".heif", ".mpo",
})
_EXTENSION_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG",
    ".webp": "WEBP", ".gif": "GIF", ".bmp": "BMP", ".dib": "BMP", ".tif": "TIFF",
    ".tiff": "TIFF", ".avif": "AVIF", ".heic": "HEIF", ".heif": "HEIF", ".mpo": "MPO",
}
_JPEG_FAMILY = ("JPEG", "MPO")  # MPO: phone photos with a depth map; the JPEG plugin opens them
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@functools.cache
def allowed_formats() -> tuple[str, ...]:
    """The allow-list, plus AVIF/HEIF when this Pillow (or the optional pillow-heif) reads them."""
    _register_heif()
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS + OPTIONAL_FORMATS if f in Image.OPEN)


def readable_extensions() -> tuple[str, ...]:
    """The extensions this computer decodes (AVIF/HEIC only with their decoder), sorted: what
    an open dialog or a help text may offer."""
    formats = allowed_formats()
    return tuple(sorted(e for e, f in _EXTENSION_FORMATS.items()
                        if f in formats or (f in _JPEG_FAMILY and "JPEG" in formats)))


def _register_heif() -> None:
    """iPhone photos are HEIC; pillow-heif adds that decoder when the user installed it."""
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]
    except ImportError:
        return
    register_heif_opener()


# --- public API --------------------------------------------------------------------------------


def load_image(path: str | Path, *, target_edge: int | None = 4096) -> LoadedImage:
    """Decode for the model: RGB, EXIF-oriented, alpha on white, first frame of animations.

    target_edge is the longest edge the caller needs; a JPEG with a longer edge than that is
    reduced while decoding to between target_edge and twice it (other formats are decoded
    whole: they have no cheap reduced decode). None decodes every image at full size.
    """
    return _decode(Path(path), target_edge, thumbnail=False)


def load_thumbnail(path: str | Path, edge: int) -> LoadedImage:
    """Decode fast for the gallery: at most edge×edge pixels, same safety rules as load_image."""
    if edge < 1:
        raise ValueError("edge must be a positive number of pixels")
    return _decode(Path(path), edge, thumbnail=True)


def probe_image(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the header, without decoding pixels.

    The size is as stored on disk (before EXIF orientation). Images over the safety limit are
    refused here too, so a caller that probes first learns early what load_image would say.
    """
    path = Path(path)
    _check_file(path)
    with _guarded(path), _open(path) as image:
        _check_pixels(path, image.size)
        return image.format or "unknown", image.size


# --- opening -----------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    """Reasons we can give before Pillow touches the file (and a FIFO must never be opened)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path.name}: file not found") from None
    except PermissionError:
        raise ImageError(f"{path.name}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path.name}: is a folder, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path.name}: not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise ImageError(f"{path.name}: file is empty (0 bytes)")


def _open(path: Path) -> Image.Image:
    """Image.open with the allow-list, turning the ways opening fails into specific reasons."""
    try:
        return Image.open(path, formats=allowed_formats())
    except UnidentifiedImageError:
        raise ImageError(f"{path.name}: {_unidentified_reason(path)}") from None
    except FileNotFoundError:
        raise ImageError(f"{path.name}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path.name}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{path.name}: permission denied") from None


_MISSING_DECODER = {
    "HEIF": "HEIF/HEIC, which needs the optional 'pillow-heif' package",
    "AVIF": "AVIF, which this Pillow was built without",
}


def _unidentified_reason(path: Path) -> str:
    """Say which optional decoder a .heic/.avif file would need, when it is missing."""
    wanted = _EXTENSION_FORMATS.get(path.suffix.lower(), "")
    if wanted in _MISSING_DECODER and wanted not in allowed_formats():
        return f"not an image (or not a supported format): {_MISSING_DECODER[wanted]}"
    return "not an image (or not a supported format)"


class _guarded:
    """Context for one open/decode: the bomb warning is an error, any failure an ImageError.

    Pillow also warns about damaged EXIF it reads past; the picture is fine, so those warnings
    are silenced rather than printed on a user's terminal. Every other warning passes through.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        self._warnings.__exit__(kind, exc, tb)
        if exc is None or isinstance(exc, ImageError) or not isinstance(exc, Exception):
            return False  # success, already explained, or KeyboardInterrupt and friends
        raise _explain(self.path, exc) from None


def _explain(path: Path, exc: Exception) -> ImageError:
    """One sentence for a user, from whatever a decoder raised."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return ImageError(f"{path.name}: image too large: {pixels} exceeds the safety limit "
                          f"of {_limit():,}")
    if isinstance(exc, MemoryError):
        return ImageError(f"{path.name}: not enough memory to decode this image")
    detail = str(exc) or type(exc).__name__
    return ImageError(f"{path.name}: image is truncated or corrupt: {detail}")


def _limit() -> int:
    """The pixel limit in force: Pillow's, which this module never changes."""
    return Image.MAX_IMAGE_PIXELS or 0


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse more than MAX_IMAGE_PIXELS ourselves, in case another thread's catch_warnings
    exit restored the filters while we were opening (the warning would then only be printed)."""
    limit = _limit()
    if limit and size[0] * size[1] > limit:
        raise ImageError(f"{path.name}: image too large: {size[0]}×{size[1]} pixels exceeds "
                         f"the safety limit of {limit:,}")


# --- decoding ----------------------------------------------------------------------------------


def _decode(path: Path, target_edge: int | None, thumbnail: bool) -> LoadedImage:
    _check_file(path)
    notes: list[str] = []
    with _guarded(path), _open(path) as image:
        _check_pixels(path, image.size)
        original_size = image.size
        fmt = image.format or "unknown"
        notes += _format_notes(path, image)
        if _draft(image, target_edge) and not thumbnail:
            notes.append(f"reduced while decoding from {original_size[0]}×{original_size[1]} "
                         f"to {image.size[0]}×{image.size[1]}")
        image.load()
        rgb = _to_rgb(_orient(image, notes), path.name)
    if thumbnail and target_edge:
        rgb.thumbnail((target_edge, target_edge))
    return LoadedImage(image=rgb, path=str(path), original_size=original_size, format=fmt,
                       notes=notes)


def _format_notes(path: Path, image: Image.Image) -> list[str]:
    """What the user should know: a misleading extension, or frames we did not use."""
    notes = []
    fmt = image.format or "unknown"
    expected = _EXTENSION_FORMATS.get(path.suffix.lower())
    same_family = expected in _JPEG_FAMILY and fmt in _JPEG_FAMILY
    if expected and expected != fmt and not same_family:
        notes.append(f"the file is {fmt} although its name ends in {path.suffix}")
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        if fmt == "TIFF":
            notes.append(f"multi-page ({frames} pages): first page used")
        elif fmt == "MPO":
            notes.append(f"multi-picture JPEG ({frames} pictures): first picture used")
        else:
            notes.append(f"animated ({frames} frames): first frame used")
        image.seek(0)  # n_frames may have walked through the file
    return notes


def _draft(image: Image.Image, target_edge: int | None) -> bool:
    """Ask the JPEG decoder for a 1/2, 1/4 or 1/8 scale that keeps the long edge >= target.

    The request keeps the aspect ratio: Pillow picks the scale from the *smaller* ratio of the
    two edges, so asking for a square would never reduce a panorama.
    """
    if not target_edge or image.format not in _JPEG_FAMILY or max(image.size) <= target_edge:
        return False
    width, height = image.size
    ratio = target_edge / max(width, height)
    before = image.size
    image.draft(None, (max(1, round(width * ratio)), max(1, round(height * ratio))))
    return image.size != before


def _orient(image: Image.Image, notes: list[str]) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block must not lose the picture.

    Always returns a new image, detached from the file that is about to be closed.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - damaged EXIF raises many kinds; the pixels are fine
        notes.append("EXIF orientation unreadable: shown as stored")
        return image.copy()


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """RGB, with alpha composited on white and wide or odd modes mapped faithfully."""
    if image.mode in _WIDE_GREY_MODES:
        image = _grey_to_8bit(image)
    if image.mode in ("P", "L", "1", "RGB") and image.info.get("transparency") is not None:
        image = image.convert("RGBA")  # palette or colour-key transparency (GIF, PNG tRNS)
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")  # CMYK, YCbCr, L, 1, P ...
    except ValueError:
        raise ImageError(f"{name}: unsupported colour mode {image.mode}") from None


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8 bits, keeping the brightness the file means.

    Pillow's own conversion clips (a 16-bit photo becomes almost all white), so scale by the
    type's nominal range: 0..65535 for 16-bit, 0..1 for float. Values outside any nominal
    range (scientific data) are stretched from their minimum to their maximum instead.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float32))
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and lo >= 0 and 255 < hi <= 65535):
        lo, hi = 0.0, 65535.0
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    elif lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    grey = np.clip(np.rint((values - lo) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey)  # 2-D uint8: mode L
