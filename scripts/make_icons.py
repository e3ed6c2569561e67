#!/usr/bin/env python3
"""Render the app icon's SVG source into the PNG sizes, the Windows .ico and the macOS .icns.

    python scripts/make_icons.py            # rewrite resources/icons/ from resources/smolvlm-desktop.svg
    python scripts/make_icons.py --check    # exit 1 if resources/icons/ no longer matches the SVG

Why Qt's SVG renderer (QtSvg) and not cairosvg or rsvg-convert: PySide6 is already a dependency
of the app, so this script needs nothing new on any developer's machine or in CI. The SVG is
kept to plain shapes and a linear gradient, which every renderer draws alike (the .deb also
installs the SVG itself for desktops that prefer scalable icons).

Pillow writes the .ico and .icns, each size from its own rendering rather than one big image
scaled down, so the 16 px icon is drawn for 16 px.

--check compares pixels with a small tolerance rather than bytes: another Qt version may
anti-alias an edge a shade differently, which is fine; a changed drawing is not.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SVG = ROOT / "resources" / "smolvlm-desktop.svg"
OUT = ROOT / "resources" / "icons"
NAME = "smolvlm-desktop"

PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)  # the freedesktop hicolor sizes we install
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)        # 256 is the largest size Windows reads from an .ico
ICNS_SIZES = (16, 32, 64, 128, 256, 512, 1024)    # what Pillow's ICNS writer stores (incl. @2x)

# --check: an edge pixel may differ by an anti-aliasing shade; the drawing may not change.
MAX_MEAN_DIFF = 1.0   # mean absolute difference per channel, 0..255
MAX_BAD_PIXELS = 0.01  # share of pixels allowed to differ by more than 32 in some channel


def render(svg: Path, size: int) -> Image.Image:
    """The SVG drawn at size x size pixels as an RGBA Pillow image."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer
    from PySide6.QtWidgets import QApplication

    # Qt needs an application object. A QApplication (not a QGuiApplication): if this runs inside
    # the test suite before any widget test, a QGuiApplication would be the one instance there
    # can be, and every widget after it would fail.
    _app = QApplication.instance() or QApplication([sys.argv[0]])  # noqa: F841
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"make_icons: {svg} is not an SVG Qt can read")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    image = image.convertToFormat(QImage.Format.Format_RGBA8888)  # straight (not premultiplied) alpha
    return Image.frombytes("RGBA", (size, size), bytes(image.constBits()), "raw", "RGBA",
                           image.bytesPerLine())


def build(svg: Path = SVG) -> dict[str, bytes]:
    """Every icon file, by file name, as bytes."""
    renders = {size: render(svg, size) for size in sorted(set(PNG_SIZES + ICO_SIZES + ICNS_SIZES))}
    files: dict[str, bytes] = {}
    for size in PNG_SIZES:
        files[f"{NAME}-{size}.png"] = _encode(renders[size], "PNG")
    largest_ico = renders[max(ICO_SIZES)]
    files[f"{NAME}.ico"] = _encode(largest_ico, "ICO", sizes=[(s, s) for s in ICO_SIZES],
                                   append_images=[renders[s] for s in ICO_SIZES])
    largest_icns = renders[max(ICNS_SIZES)]
    files[f"{NAME}.icns"] = _encode(largest_icns, "ICNS",
                                    append_images=[renders[s] for s in ICNS_SIZES[:-1]])
    return files


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def frames(data: bytes) -> dict[int, Image.Image]:
    """The images in a PNG, .ico or .icns file, by edge length (the largest scale of each)."""
    image = Image.open(io.BytesIO(data))
    found: dict[int, Image.Image] = {}
    if image.format == "ICO":
        for size in image.ico.sizes():
            found[size[0]] = image.ico.getimage(size).convert("RGBA")
    elif image.format == "ICNS":
        for width, height, scale in image.info["sizes"]:
            found[width * scale] = image.icns.getimage((width, height, scale)).convert("RGBA")
    else:
        found[image.width] = image.convert("RGBA")
    return found


def difference(a: Image.Image, b: Image.Image) -> str | None:
    """None if two renderings match within the tolerance, else why not."""
    if a.size != b.size:
        return f"size {a.size} != {b.size}"
    import numpy as np

    diffs = np.abs(np.asarray(a.convert("RGBA"), np.int16) - np.asarray(b.convert("RGBA"), np.int16))
    mean = float(diffs.mean())
    bad = float((diffs.max(axis=2) > 32).mean())
    if mean > MAX_MEAN_DIFF or bad > MAX_BAD_PIXELS:
        return f"mean channel difference {mean:.2f}, {bad:.1%} of pixels clearly different"
    return None


def check(out: Path, svg: Path = SVG) -> list[str]:
    """Problems with the committed icons in `out` compared with a fresh rendering of `svg`."""
    problems = []
    for name, fresh in build(svg).items():
        path = out / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        want, have = frames(fresh), frames(path.read_bytes())
        if sorted(want) != sorted(have):
            problems.append(f"{name}: sizes {sorted(have)}, expected {sorted(want)}")
            continue
        for size in want:
            why = difference(want[size], have[size])
            if why:
                problems.append(f"{name} at {size} px: {why}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--svg", type=Path, default=SVG)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing; exit 1 if the icons are stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out, args.svg)
        for problem in problems:
            print(f"stale icon: {problem}", file=sys.stderr)
        if problems:
            print("run: python scripts/make_icons.py", file=sys.stderr)
        return 1 if problems else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build(args.svg).items():
        (args.out / name).write_bytes(data)
        print(f"{args.out / name}  {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
