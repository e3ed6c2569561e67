#!/usr/bin/env python3
"""Build the one-folder app with PyInstaller, then check what went into it.

    python installers/build_bundle.py            # -> dist/smolvlm-desktop/ (macOS: dist/SmolVLM Desktop.app)
    python installers/build_bundle.py --check-only   # only re-check an existing build

Run it with the Python of a virtual environment that has the app and PyInstaller installed,
and ideally nothing else (installers/README.md has the commands per OS). PyInstaller builds for
the OS it runs on: a Windows bundle is built on Windows, a macOS one on a Mac.

After building, it refuses (exit 1) a bundle that holds any of the packages the app must not
ship (torch, transformers, optimum, pytest, the tests), looking both at the files on disk
and at the modules inside the executable's archive, and one without the demo model. It prints
the unpacked size and writes the full file list to dist/<name>-files.txt for review.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "installers" / "smolvlm-desktop.spec"
NAME = "smolvlm-desktop"
APP_NAME = "SmolVLM Desktop"

# Top-level Python packages that must not be in the bundle (see EXCLUDES in the spec).
FORBIDDEN = ("torch", "transformers", "optimum", "onnxscript", "onnx_ir",
             "pytest", "_pytest", "pytestqt", "tests", "sympy", "tkinter")
SIZE_LIMIT_MB = 300  # the target for the unpacked folder


def bundle_dir(dist: Path) -> Path:
    """The folder that holds the executable and its _internal/ folder."""
    if sys.platform == "darwin":
        return dist / f"{APP_NAME}.app" / "Contents" / "MacOS"
    return dist / NAME


def executable(dist: Path) -> Path:
    return bundle_dir(dist) / (f"{NAME}.exe" if sys.platform == "win32" else NAME)


def run_pyinstaller(dist: Path, work: Path) -> float:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        sys.exit(f"build_bundle: PyInstaller is not installed for {sys.executable}; "
                 "`python -m pip install pyinstaller` (a build tool, not an app dependency)")
    command = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
               "--distpath", str(dist), "--workpath", str(work), str(SPEC)]
    print("+", " ".join(command), flush=True)
    start = time.monotonic()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.monotonic() - start


def archive_modules(exe: Path) -> list[str]:
    """Module names inside the executable's embedded archive (pure-Python code lives there)."""
    from PyInstaller.archive.readers import pkg_archive_contents

    return pkg_archive_contents(str(exe), recursive=True)


def problems_in(dist: Path) -> tuple[list[str], list[Path], int]:
    """(what is wrong, every file, total bytes) for a built bundle."""
    top = dist / f"{APP_NAME}.app" if sys.platform == "darwin" else dist / NAME
    exe = executable(dist)
    if not exe.is_file():
        return [f"no executable at {exe}"], [], 0
    files = sorted(p for p in top.rglob("*") if p.is_file() and not p.is_symlink())
    total = sum(p.stat().st_size for p in files)
    problems = []
    # Packages sit at the top of _internal/ (macOS: Contents/Frameworks and Contents/Resources),
    # as folders, single-file extension modules or .dist-info metadata folders.
    roots = {top / "_internal", top / "Contents" / "Frameworks", top / "Contents" / "Resources"}
    for root in roots:
        for path in root.iterdir() if root.is_dir() else []:
            name = path.name
            package = name.split("-")[0] if name.endswith(".dist-info") else name.split(".")[0]
            if package in FORBIDDEN:
                problems.append(f"forbidden package in the bundle: {path.relative_to(top)}")
    for module in archive_modules(exe):
        if module.split(".")[0] in FORBIDDEN:
            problems.append(f"forbidden module in the executable's archive: {module}")
    demo = [p for p in files if p.name == "config.json" and p.parent.name == "tiny-smolvlm"]
    if not demo:
        problems.append("the tiny demo model (smolvlm_desktop/data/tiny-smolvlm) is missing")
    if sys.platform == "win32" and not any(p.name.lower() == "msvcp140.dll" for p in files):
        # ONNX Runtime and Qt need the Visual C++ runtime; the PySide6 and onnxruntime wheels
        # normally carry it. Without it the app fails to start on a PC that lacks the VC++
        # Redistributable, so do not ship such a bundle.
        problems.append("msvcp140.dll (Visual C++ runtime) is not in the bundle")
    if total > SIZE_LIMIT_MB * 1e6:
        problems.append(f"the bundle is {total / 1e6:.0f} MB, over the {SIZE_LIMIT_MB} MB target")
    return problems, files, total


def report(dist: Path) -> int:
    problems, files, total = problems_in(dist)
    top = dist / f"{APP_NAME}.app" if sys.platform == "darwin" else dist / NAME
    listing = dist / f"{NAME}-files.txt"
    if files:
        listing.write_text("".join(f"{p.stat().st_size:>12}  {p.relative_to(top)}\n" for p in files),
                           encoding="utf-8")
        biggest = sorted(files, key=lambda p: p.stat().st_size, reverse=True)[:8]
        print(f"bundle: {top}")
        print(f"bundle size: {total / 1e6:.1f} MB unpacked in {len(files)} files "
              f"(list: {listing.relative_to(ROOT) if listing.is_relative_to(ROOT) else listing})")
        for p in biggest:
            print(f"  {p.stat().st_size / 1e6:7.1f} MB  {p.relative_to(top)}")
    for problem in problems:
        print(f"bundle check FAILED: {problem}", file=sys.stderr)
    if not problems:
        print("bundle check passed: no torch/transformers/optimum/pytest/tests; demo model present")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller",
                        help="PyInstaller's scratch folder (default build/pyinstaller/)")
    parser.add_argument("--check-only", action="store_true", help="do not build; check dist/")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # PyInstaller's Qt hooks start Qt
    if not args.check_only:
        seconds = run_pyinstaller(args.dist.resolve(), args.work.resolve())
        print(f"PyInstaller took {seconds:.0f} s")
    return report(args.dist.resolve())


if __name__ == "__main__":
    sys.exit(main())
