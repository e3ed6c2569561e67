#!/usr/bin/env python3
"""Package the PyInstaller folder (dist/smolvlm-desktop) as a Debian package with dpkg-deb.

    python installers/linux/build_deb.py        # -> dist/smolvlm-desktop_<version>_<arch>.deb

Run installers/build_bundle.py first. Needs only dpkg-deb and readelf (binutils), both on
every Debian/Ubuntu build machine; no root (dpkg-deb --root-owner-group sets the owners).

What the package installs:
    /opt/smolvlm-desktop/                       the bundle (Python, Qt, ONNX Runtime, demo model)
    /usr/bin/smolvlm-desktop                    a launcher script (the command line and the window)
    /usr/share/applications/smolvlm-desktop.desktop
    /usr/share/icons/hicolor/*/apps/smolvlm-desktop.{png,svg}
    /usr/share/metainfo/io.github.smolvlm_desktop.metainfo.xml
    /usr/share/doc/smolvlm-desktop/copyright
No maintainer scripts: dpkg triggers of the icon cache and desktop database packages pick up
the new icon and .desktop file by themselves.

Depends is worked out, not guessed: every ELF file in the bundle is read with `readelf -d`,
and each library it needs that the bundle does not carry must be in SONAME_PACKAGES below,
or the build stops and names it (so a new Qt that links a new system library cannot slip
through to users as "error while loading shared libraries"). libc6's minimum version is the
newest GLIBC_x.y symbol version any file asks for.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = "smolvlm-desktop"
HERE = Path(__file__).resolve().parent
RESOURCES = ROOT / "resources"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)

# System libraries the bundle links to but does not carry, and the Debian/Ubuntu package of
# each (the same names on Debian 12 and Ubuntu 24.04). libc6 is handled separately.
SONAME_PACKAGES = {
    "libc.so.6": None, "libm.so.6": None, "libdl.so.2": None, "libpthread.so.0": None,
    "librt.so.1": None, "ld-linux-x86-64.so.2": None, "ld-linux-aarch64.so.1": None,
    "libstdc++.so.6": "libstdc++6",
    "libgcc_s.so.1": "libgcc-s1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libOpenGL.so.0": "libopengl0",
    "libxcb.so.1": "libxcb1",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}
# Needed at run time although no library names them: the font configuration and at least one
# font (Qt shows empty boxes without), and the OpenGL/EGL loaders Qt opens with dlopen.
ALWAYS_DEPENDS = ["libgl1", "libegl1", "fontconfig-config", "fonts-dejavu-core"]
# Desktop integration that the app works without (xdg-desktop-portal gives native file
# dialogs; the icon theme and desktop database refresh menus).
RECOMMENDS = ["xdg-desktop-portal", "hicolor-icon-theme", "desktop-file-utils"]


def version() -> str:
    """The app's version, from pyproject.toml (the one place it is written)."""
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def elf_files(bundle: Path) -> list[Path]:
    return [p for p in sorted(bundle.rglob("*"))
            if p.is_file() and not p.is_symlink() and is_elf(p)]


def system_requirements(bundle: Path) -> tuple[set[str], str]:
    """(sonames the bundle needs but does not carry, newest GLIBC version it asks for)."""
    carried = {p.name for p in bundle.rglob("*") if p.is_file()}
    needed: set[str] = set()
    glibc = "2.17"
    for path in elf_files(bundle):
        dynamic = subprocess.run(["readelf", "-d", "-V", "-W", str(path)], capture_output=True,
                                 text=True).stdout
        needed.update(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
        for found in re.findall(r"Name: GLIBC_([0-9.]+)", dynamic):
            if _vkey(found) > _vkey(glibc):
                glibc = found
    return needed - carried, glibc


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def depends(bundle: Path) -> list[str]:
    missing, glibc = system_requirements(bundle)
    unknown = sorted(s for s in missing if s not in SONAME_PACKAGES)
    if unknown:
        sys.exit("build_deb: the bundle needs system libraries with no known package: "
                 + ", ".join(unknown) + "\n  add them to SONAME_PACKAGES in " + __file__)
    packages = {SONAME_PACKAGES[s] for s in missing if SONAME_PACKAGES[s]} | set(ALWAYS_DEPENDS)
    return [f"libc6 (>= {glibc})"] + sorted(packages)


def control(arch: str, installed_kb: int, deps: list[str]) -> str:
    return f"""Package: {NAME}
Version: {version()}
Architecture: {arch}
Maintainer: SmolVLM Desktop developers <noreply@localhost>
Installed-Size: {installed_kb}
Depends: {", ".join(deps)}
Recommends: {", ".join(RECOMMENDS)}
Section: graphics
Priority: optional
Description: ask about and caption images, entirely offline
 SmolVLM Desktop runs the SmolVLM vision-language models on ONNX Runtime on
 this computer: drop a photo on the window and ask about it, or caption a
 whole folder for a dataset. No image, prompt or answer leaves the machine.
 .
 Self-contained: Python, Qt and ONNX Runtime are inside /opt/{NAME}.
 Includes a tiny demo model (its answers are noise); real models are
 downloaded on request with `smolvlm-desktop models pull`.
"""


COPYRIGHT = f"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: SmolVLM Desktop

Files: *
Copyright: 2026 The SmolVLM Desktop developers
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.

Files: opt/{NAME}/_internal/*
Comment: Bundled third-party software (Python, Qt for Python, ONNX Runtime,
 NumPy, Pillow, tokenizers and their libraries) under their own licences; see the
 licence files inside each package's folder and *.dist-info folder.
"""


def stage(bundle: Path, root: Path) -> None:
    """Lay the package's files out under `root` as they will be installed."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(bundle, root / "opt" / NAME, symlinks=True)
    put(HERE / NAME, root / "usr" / "bin" / NAME, 0o755)
    put(RESOURCES / f"{NAME}.desktop", root / "usr/share/applications" / f"{NAME}.desktop")
    put(RESOURCES / "io.github.smolvlm_desktop.metainfo.xml",
        root / "usr/share/metainfo/io.github.smolvlm_desktop.metainfo.xml")
    icons = root / "usr/share/icons/hicolor"
    for size in ICON_SIZES:
        put(RESOURCES / "icons" / f"{NAME}-{size}.png", icons / f"{size}x{size}/apps/{NAME}.png")
    put(RESOURCES / f"{NAME}.svg", icons / "scalable/apps" / f"{NAME}.svg")
    doc = root / "usr/share/doc" / NAME
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(COPYRIGHT, encoding="utf-8")
    # Debian's usual modes whatever the umask was: 755 for folders and programs, 644 for data
    # and for shared libraries (wheels ship .so files executable; they need not be).
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        program = path.stat().st_mode & 0o111 and ".so" not in path.name
        path.chmod(0o755 if path.is_dir() or program else 0o644)


def put(src: Path, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def installed_size_kb(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) // 1024 + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / NAME)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "deb")
    # zstd: 5 s and 104 MB here; xz: 78 MB but over 3 minutes on 2 cores. Every dpkg that can
    # run this bundle (glibc >= 2.36: Debian 12, Ubuntu 22.10 and later) reads zstd.
    parser.add_argument("--compression", default="zstd", choices=["zstd", "xz", "gzip"],
                        help="zstd (default, fast) or xz (smallest, slow)")
    args = parser.parse_args(argv)
    if not (args.bundle / NAME).is_file():
        sys.exit(f"build_deb: no bundle at {args.bundle}; run installers/build_bundle.py first")
    arch = architecture()
    root = args.work / "root"
    stage(args.bundle, root)
    deps = depends(root / "opt" / NAME)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(control(arch, installed_size_kb(root), deps), "utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    deb = args.out / f"{NAME}_{version()}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{args.compression}", "--build",
                    str(root), str(deb)], check=True)
    print(f"{deb}: {deb.stat().st_size / 1e6:.1f} MB; Depends: {', '.join(deps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
