"""A folder of hostile and odd images, built from scratch in a test's tmp_path.

Other test modules reuse it: ``make_hostile_folder(tmp_path)`` returns file name -> the
substring the loader's ImageError must contain, or None when the file must load. The pixel
values below are what a correct loader produces, so tests can check colours as well.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# What the special files must look like once loaded (RGB, alpha composited on white).
RGBA_COLOUR = (255, 0, 0, 128)  # half-transparent red ...
RGBA_ON_WHITE = (255, 127, 127)  # ... on white
PALETTE_OPAQUE = (0, 200, 0)  # right half of the palette PNG; the left half is transparent
GREY16_VALUE = 128 * 257  # a 16-bit grey that is exactly 128 in 8 bits
ANIMATED_FIRST = (255, 0, 0)
ANIMATED_FRAMES = 3
ROTATED_STORED_SIZE = (40, 20)  # EXIF orientation 6: shown as 20×40
LARGE_JPEG_SIZE = (8200, 1000)  # long edge > 2×4096: the JPEG decoder reduces it by 2

TRUNCATED = "image is truncated or corrupt"
NOT_AN_IMAGE = "not an image (or not a supported format)"
TOO_LARGE = "image too large"


def make_hostile_folder(folder: Path) -> dict[str, str | None]:
    """Create every case in folder; return name -> expected error substring (None: loads)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, str | None] = {}
    for name, (build, expected) in _CASES.items():
        build(folder / name)
        cases[name] = expected
    return cases


# --- builders ----------------------------------------------------------------------------------


def _noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Random pixels: compress badly, so a cut file is missing real image data."""
    rng = np.random.default_rng(1234)
    channels = len(mode)
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze())


def _truncated_jpeg(path: Path) -> None:
    data = io.BytesIO()
    _noise((256, 256)).save(data, "JPEG", quality=90)
    path.write_bytes(data.getvalue()[: len(data.getvalue()) * 6 // 10])


def _corrupt_png(path: Path) -> None:
    data = io.BytesIO()
    _noise((64, 64)).save(data, "PNG")
    raw = bytearray(data.getvalue())
    start = raw.index(b"IDAT") + 4
    for offset in range(start + 10, start + 200):
        raw[offset] ^= 0xA5  # damage the compressed pixels (and so their checksum)
    path.write_bytes(bytes(raw))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("These are not the pixels you are looking for.\n", encoding="utf-8")


def _cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, "JPEG", quality=95)  # red


def _grey16_png(path: Path) -> None:
    array = np.full((16, 24), GREY16_VALUE, dtype=np.uint16)
    Image.fromarray(array).save(path, "PNG")  # opens as mode I;16


def _palette_transparent_png(path: Path) -> None:
    image = Image.new("P", (16, 8), 0)
    image.putpalette([0, 0, 0, *PALETTE_OPAQUE] + [0, 0, 0] * 254)
    image.paste(1, (8, 0, 16, 8))
    image.save(path, "PNG", transparency=0)  # index 0 (the left half) is fully transparent


def _rgba_png(path: Path) -> None:
    Image.new("RGBA", (16, 16), RGBA_COLOUR).save(path, "PNG")


def _animated_gif(path: Path) -> None:
    colours = [ANIMATED_FIRST, (0, 255, 0), (0, 0, 255)][:ANIMATED_FRAMES]
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.new("RGB", ROTATED_STORED_SIZE, (0, 0, 255)).save(path, "JPEG", exif=exif.tobytes())


def _broken_exif_jpeg(path: Path) -> None:
    """An APP1 Exif block whose first IFD points far outside the block."""
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\xff" * 32
    Image.new("RGB", (24, 16), (0, 128, 255)).save(path, "JPEG", exif=exif)


def _png_named_jpg(path: Path) -> None:
    Image.new("RGB", (12, 12), (10, 20, 30)).save(path, "PNG")


def _non_ascii(path: Path) -> None:
    Image.new("RGB", (12, 12), (200, 100, 50)).save(path, "PNG")


def _icon(path: Path) -> None:
    """A real image in a format outside the allow-list (ICO)."""
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path, "ICO")


def _png_header(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width×height: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    pixels = zlib.compress(b"\x00" * 1024, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
                     + chunk(b"IEND", b""))


def _bomb(path: Path) -> None:
    side = math.isqrt(2 * Image.MAX_IMAGE_PIXELS) + 1000  # over 2× the limit: Pillow's error
    _png_header(path, side, side)


def _over_limit(path: Path) -> None:
    side = math.isqrt(Image.MAX_IMAGE_PIXELS * 3 // 2)  # 1.5× the limit: Pillow only warns
    _png_header(path, side, side)


def _large_jpeg(path: Path) -> None:
    Image.new("RGB", LARGE_JPEG_SIZE, (90, 140, 200)).save(path, "JPEG", quality=80)


def _folder(path: Path) -> None:
    path.mkdir()


_CASES = {
    "truncated.jpg": (_truncated_jpeg, TRUNCATED),
    "corrupt.png": (_corrupt_png, TRUNCATED),
    "empty.jpg": (_empty, "file is empty (0 bytes)"),
    "text.jpg": (_text, NOT_AN_IMAGE),
    "icon.png": (_icon, NOT_AN_IMAGE),
    "folder.jpg": (_folder, "is a folder"),
    "cmyk.jpg": (_cmyk_jpeg, None),
    "grey16.png": (_grey16_png, None),
    "palette_transparent.png": (_palette_transparent_png, None),
    "rgba.png": (_rgba_png, None),
    "animated.gif": (_animated_gif, None),
    "rotated_exif6.jpg": (_rotated_jpeg, None),
    "broken_exif.jpg": (_broken_exif_jpeg, None),
    "png_named.jpg": (_png_named_jpg, None),
    "café_日本.png": (_non_ascii, None),
    "bomb.png": (_bomb, TOO_LARGE),
    "over_limit.png": (_over_limit, TOO_LARGE),
    "large.jpg": (_large_jpeg, None),
}
