"""Which files in what the user gave us are images to caption.

Folders are expanded (optionally recursively); hidden files and folders, non-images and the
app's own outputs are passed over quietly, because a dataset folder is full of them (.git,
.DS_Store, captions from the last run, half-written ``.name.tmp`` files after a power cut).
A file the user named explicitly is always kept, whatever its name: if it is not an image,
the loader says so for that one file, which is more useful than silently dropping it.

Order: the paths in the order given; inside a folder, sorted the way a person sorts
(``img2`` before ``img10``, case ignored), so batch progress follows the file manager.
Symbolic links to folders are not followed when recursing (they can loop).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from ..engine.images import IMAGE_EXTENSIONS


def discover_images(paths: Sequence[Path], recursive: bool = False
                    ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image candidates without repeats, [(path, problem)] for paths we could not use)."""
    found: dict[str, Path] = {}
    problems: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            candidates = _images_in(path, recursive, problems)
        elif path.exists() or path.is_symlink():
            candidates = iter([path])  # named explicitly: kept, the loader judges it
        else:
            problems.append((path, "file not found"))
            continue
        for candidate in candidates:
            found.setdefault(os.path.normcase(os.path.abspath(candidate)), candidate)
    return list(found.values()), problems


def is_image_name(name: str) -> bool:
    """A visible file whose extension is an image format we read.

    The app's own outputs (.txt .caption .json .jsonl .csv .xmp, including photo.jpg.xmp)
    never match, because only the last extension counts.
    """
    suffix = os.path.splitext(name)[1].lower()
    return not name.startswith(".") and suffix in IMAGE_EXTENSIONS


def _images_in(folder: Path, recursive: bool, problems: list[tuple[Path, str]]
               ) -> Iterator[Path]:
    """Images in folder (and below, when recursive), folder by folder, each sorted."""
    pending = [folder]
    while pending:
        current = pending.pop(0)
        try:
            with os.scandir(current) as scan:
                entries = sorted(scan, key=lambda e: _natural_key(e.name))
        except OSError as exc:
            problems.append((current, f"cannot read folder: {exc.strerror or exc}"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if recursive and entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
            elif is_image_name(entry.name) and entry.is_file():
                yield Path(entry.path)
        pending[:0] = subfolders  # depth first: a subfolder's images follow its parent's


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """img2 < img10; text compared without case."""
    return [(0, int(part)) if part.isdigit() else (1, part.casefold())
            for part in re.split(r"(\d+)", name) if part]
