"""Which files in what the user gave us are images to caption.

Folders are expanded (optionally recursively); hidden files and folders, non-images and the
app's own outputs are passed over quietly, because a dataset folder is full of them. A file the
user named explicitly is always kept: if it is not an image, the loader says so for that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from ..engine.images import IMAGE_EXTENSIONS

OUTPUT_EXTENSIONS = frozenset({".txt", ".caption", ".xmp", ".json", ".jsonl", ".csv"})


def _hidden(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    return any(part.startswith(".") for part in rel.parts)


def _images_in(folder: Path, recursive: bool) -> Iterable[Path]:
    entries = folder.rglob("*") if recursive else folder.iterdir()
    for entry in entries:
        if _hidden(entry, folder) or not entry.is_file():
            continue
        if entry.suffix.lower() in IMAGE_EXTENSIONS:
            yield entry


def discover_images(paths: Sequence[Path], recursive: bool = False
                    ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(images in a stable order without repeats, [(path, problem)] for paths that do not exist)."""
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found.extend(sorted(_images_in(path, recursive), key=lambda p: str(p).lower()))
        elif path.exists():
            found.append(path)
        else:
            problems.append((path, "file not found"))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, problems
