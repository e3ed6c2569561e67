"""library/discover.py on real nested folders with hidden files, outputs and odd names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smolvlm_desktop.library import discover
from smolvlm_desktop.library.discover import discover_images


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _touch(root,
           "img10.jpg", "img2.jpg", "B.PNG", "a.jpeg",
           ".hidden.jpg", ".git/objects/x.jpg", ".a.jpeg.1f2e3d4c.tmp",
           "a.txt", "a.caption", "a.json", "a.jpeg.xmp", "a.xmp", "metadata.jsonl",
           "captions.csv", "notes.md", "Thumbs.db",
           "sub/c.webp", "sub/.cache/d.jpg", "sub/deep/e.gif", "sub/deep/e.txt",
           "other/f.tif")
    return root


def _names(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_folder_lists_visible_images_in_natural_order(tree: Path) -> None:
    found, problems = discover_images([tree])
    assert _names(found, tree) == ["a.jpeg", "B.PNG", "img2.jpg", "img10.jpg"]
    assert problems == []


def test_recursive_walks_subfolders_depth_first_skipping_hidden_ones(tree: Path) -> None:
    found, problems = discover_images([tree], recursive=True)
    assert _names(found, tree) == ["a.jpeg", "B.PNG", "img2.jpg", "img10.jpg",
                                   "other/f.tif", "sub/c.webp", "sub/deep/e.gif"]
    assert problems == []


def test_outputs_and_temp_files_are_never_candidates(tree: Path) -> None:
    found, _ = discover_images([tree], recursive=True)
    suffixes = {p.suffix.lower() for p in found}
    assert not suffixes & {".txt", ".caption", ".xmp", ".json", ".jsonl", ".csv", ".tmp", ".md"}


def test_explicit_files_are_kept_whatever_their_name(tree: Path) -> None:
    given = [tree / "notes.md", tree / ".hidden.jpg", tree / "img2.jpg"]
    found, problems = discover_images(given)
    assert found == given  # in the order given; the loader reports what is not an image
    assert problems == []


def test_missing_paths_are_reported_and_the_rest_still_found(tree: Path) -> None:
    missing = tree / "nope.jpg"
    found, problems = discover_images([missing, tree / "sub"])
    assert _names(found, tree) == ["sub/c.webp"]
    assert problems == [(missing, "file not found")]


def test_repeats_are_dropped_keeping_the_first(tree: Path) -> None:
    found, _ = discover_images([tree / "img2.jpg", tree, tree / "sub" / ".." / "img2.jpg"])
    assert _names(found, tree) == ["img2.jpg", "a.jpeg", "B.PNG", "img10.jpg"]


def test_symlinked_folder_loop_is_not_followed(tree: Path) -> None:
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)
    found, _ = discover_images([tree], recursive=True)
    assert len(found) == len(set(found)) == 7


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_special_files_inside_a_folder_are_passed_over(tree: Path) -> None:
    os.mkfifo(tree / "pipe.jpg")
    found, _ = discover_images([tree])
    assert "pipe.jpg" not in _names(found, tree)


def test_unreadable_subfolder_is_a_problem_not_a_crash_simulated(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, where chmod blocks nothing; make scandir refuse one folder."""
    real_scandir = os.scandir

    def scandir(path: os.PathLike[str] | str) -> object:
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(discover.os, "scandir", scandir)
    found, problems = discover_images([tree], recursive=True)
    assert "other/f.tif" in _names(found, tree)
    assert problems == [(tree / "sub", "cannot read folder: Permission denied")]


def test_non_ascii_names(tmp_path: Path) -> None:
    _touch(tmp_path, "café_日本.png", "ßtraße.JPG")
    found, _ = discover_images([tmp_path])
    assert sorted(p.name for p in found) == ["café_日本.png", "ßtraße.JPG"]


def test_home_is_expanded(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree.parent))
    found, problems = discover_images([Path("~/photos/img2.jpg")])
    assert found == [tree / "img2.jpg"] and problems == []
