#!/usr/bin/env python3
"""Package the PyInstaller folder (dist/smolvlm-desktop) as a Debian package with dpkg-deb.

    python installers/linux/build_deb.py        # -> dist/smolvlm-desktop_<version>_<arch>.deb

Run installers/build_bundle.py first. Needs only dpkg-deb and readelf (binutils), both on
every Debian/Ubuntu build machine; no root (dpkg-deb --root-owner-group sets the owners).

What the package installs:
    /usr/lib/smolvlm-desktop/                   the bundle (Python, Qt, ONNX Runtime, demo model)
    /usr/bin/smolvlm-desktop                    a launcher script (the command line and the window)
    /usr/share/applications/smolvlm-desktop.desktop
    /usr/share/icons/hicolor/*/apps/smolvlm-desktop.{png,svg}
    /usr/share/metainfo/io.github.smolvlm_desktop.metainfo.xml
    /usr/share/doc/smolvlm-desktop/copyright    the app's licence and an index of the bundled ones
    /usr/share/doc/smolvlm-desktop/licenses/    every bundled component's licence files
Nothing in /opt: Debian policy keeps it for the local administrator, and a package that ships
/opt/NAME also owns /opt itself. No maintainer scripts: dpkg triggers of the icon cache and
desktop database packages pick up the new icon and .desktop file by themselves.

Licences are collected, not written by hand: the Python packages the app depends on (walked
from smolvlm-desktop's own requirements in the build venv) each give their licence files from
their installed metadata; one without any gives a licence that Debian ships in
/usr/share/common-licenses, or the build stops and names it. Python's own licence comes from
the Python that built the bundle, and each system library PyInstaller copied in gives its
Debian package's copyright file (found with dpkg -S). Texts a wheel needs but does not carry
(ICU inside the Qt wheel) are in installers/linux/licenses/.

Depends is worked out, not guessed: every ELF file in the bundle is read with `readelf -d`,
and each library it needs that the bundle does not carry must be in SONAME_PACKAGES below,
or the build stops and names it (so a new Qt that links a new system library cannot slip
through to users as "error while loading shared libraries"). libc6's minimum version is the
newest GLIBC_x.y symbol version any file asks for.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = "smolvlm-desktop"
HERE = Path(__file__).resolve().parent
RESOURCES = ROOT / "resources"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
APP_DIR = f"usr/lib/{NAME}"  # the bundle, inside the package root
DOC_DIR = f"usr/share/doc/{NAME}"
SOURCE_URL = "https://github.com/smolvlm-desktop/smolvlm-desktop"

# SPDX names of licences whose text Debian ships in /usr/share/common-licenses, where policy
# says a copyright file refers to them rather than repeating them.
COMMON_LICENSES = {
    "Apache-2.0": "Apache-2.0", "GPL-2.0-only": "GPL-2", "GPL-2.0-or-later": "GPL-2",
    "GPL-3.0-only": "GPL-3", "GPL-3.0-or-later": "GPL-3", "LGPL-2.1-only": "LGPL-2.1",
    "LGPL-2.1-or-later": "LGPL-2.1", "LGPL-3.0-only": "LGPL-3", "LGPL-3.0-or-later": "LGPL-3",
    "MPL-2.0": "MPL-2.0",
}
# Spellings some packages use for a licence instead of its SPDX name.
LICENSE_ALIASES = {"apache 2.0": "Apache-2.0", "apache license 2.0": "Apache-2.0",
                   "apache license, version 2.0": "Apache-2.0", "apache software license": "Apache-2.0"}
# For packages whose metadata states the licence only as a trove classifier.
CLASSIFIER_LICENSES = {
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: BSD License": "BSD",
}
# Licence texts of libraries a wheel carries without their text (in installers/linux/licenses/).
EXTRA_LICENSE_FILES = {"pyside6-essentials": ["ICU.txt"]}
LICENSE_NAME = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|THIRDPARTYNOTICES|AUTHORS)", re.I)

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
 Self-contained: Python, Qt and ONNX Runtime are inside /{APP_DIR}.
 Includes a tiny demo model (its answers are noise); real models are
 downloaded on request with `smolvlm-desktop models pull`.
"""


COPYRIGHT_HEAD = f"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: SmolVLM Desktop
Source: {SOURCE_URL}

Files: *
Copyright: 2026 The SmolVLM Desktop developers
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.

Files: {APP_DIR}/_internal/*
Copyright: The authors of each component below, as named in its licence files
License: bundled-components
 The self-contained bundle carries the components below, each under its own
 licence. Their licence files are in /usr/share/doc/{NAME}/licenses/ (paths
 below are relative to it); licences Debian ships are in /usr/share/common-licenses/.
 Qt's own third-party notices: https://doc.qt.io/qt-6/licenses-used-in-qt.html
"""


@dataclass
class Component:
    """One bundled component and where its licence texts are in the package."""

    name: str
    license: str
    files: list[str] = field(default_factory=list)  # relative to the licenses/ folder
    common: list[str] = field(default_factory=list)  # names in /usr/share/common-licenses

    def line(self) -> str:
        where = self.files + [f"/usr/share/common-licenses/{c}" for c in self.common]
        return f"{self.name} ({self.license}): {', '.join(where)}"


def runtime_distributions(top: str = NAME) -> list[importlib.metadata.Distribution]:
    """`top` and every distribution it needs at run time (no extras), as installed here."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [top]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [seen[n] for n in sorted(seen) if n != top]


def license_of(dist: importlib.metadata.Distribution) -> str:
    meta = dist.metadata
    stated = meta.get("License-Expression") or meta.get("License") or ""
    if stated and "\n" not in stated.strip() and len(stated) < 100:
        return LICENSE_ALIASES.get(stated.strip().lower(), stated.strip())
    for classifier in meta.get_all("Classifier") or []:
        if classifier in CLASSIFIER_LICENSES:
            return CLASSIFIER_LICENSES[classifier]
    return "see the licence files"


def python_component(licenses: Path) -> Component:
    """The licence of the Python that runs this script, which PyInstaller bundled."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for text in (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt",
                 Path(f"/usr/share/doc/python{version}/copyright")):
        if text.is_file():
            put(text, licenses / "python" / text.name)
            return Component(f"Python {sys.version.split()[0]}", "PSF-2.0", [f"python/{text.name}"])
    sys.exit(f"build_deb: cannot find the licence of the Python at {sys.base_prefix}")


def distribution_component(dist: importlib.metadata.Distribution, licenses: Path) -> Component:
    """Copy a Python distribution's licence files; refer to Debian's copy when it has none."""
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    component = Component(f"{dist.metadata['Name']} {dist.version}", license_of(dist))
    for rel in dist.files or []:
        path = rel.as_posix()
        if ".dist-info/licenses/" in path or (LICENSE_NAME.match(rel.name) and rel.suffix not in (".py", ".pyc")):
            inside = path.split(".dist-info/licenses/", 1)[-1]  # numpy-2.4.6.dist-info/licenses/X -> X
            put(Path(dist.locate_file(rel)), licenses / name / inside)
            if f"{name}/{inside}" not in component.files:
                component.files.append(f"{name}/{inside}")
    if not component.files:
        component.common = [COMMON_LICENSES[spdx] for spdx in re.split(r"\s+OR\s+", component.license)
                            if spdx in COMMON_LICENSES]
        if not component.common:
            sys.exit(f"build_deb: {component.name} carries no licence file and its licence "
                     f"({component.license!r}) is not in /usr/share/common-licenses; add its text "
                     f"to {HERE / 'licenses'} and to EXTRA_LICENSE_FILES")
    for extra in EXTRA_LICENSE_FILES.get(name, []):
        put(HERE / "licenses" / extra, licenses / name / extra)
        component.files.append(f"{name}/{extra}")
    return component


def wheel_file_names(dists: list[importlib.metadata.Distribution]) -> set[str]:
    return {rel.name for dist in dists for rel in dist.files or []}


def system_libraries(bundle: Path, dists: list[importlib.metadata.Distribution]) -> list[Path]:
    """ELF files PyInstaller copied from the build machine's system (not from a wheel, not Python)."""
    from_wheels = wheel_file_names(dists)
    return [p for p in elf_files(bundle / "_internal") if p.parent == bundle / "_internal"
            and p.name not in from_wheels and not p.name.startswith("libpython")]


def debian_packages(libraries: list[Path]) -> dict[str, str]:
    """soname -> the Debian package that installed it on this machine (dpkg -S)."""
    where = {}
    for line in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout.splitlines():
        match = re.match(r"\s*(\S+) \(.*\) => (\S+)$", line)
        if match:
            where.setdefault(match.group(1), match.group(2))
    candidates = {}
    for lib in libraries:
        path = where.get(lib.name)
        if path:  # merged /usr: dpkg knows one spelling of the path
            other = path[4:] if path.startswith("/usr/") else "/usr" + path
            candidates[path] = candidates[other] = lib.name
    found = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True).stdout
    owners = {}
    for line in found.splitlines():
        package, _, path = line.partition(": ")
        if path in candidates:
            owners[candidates[path]] = package.split(":")[0]
    return owners


def system_components(bundle: Path, dists: list[importlib.metadata.Distribution], licenses: Path) -> list[Component]:
    libraries = system_libraries(bundle, dists)
    owners = debian_packages(libraries) if libraries else {}
    unknown = sorted(lib.name for lib in libraries if lib.name not in owners)
    if unknown:
        sys.exit("build_deb: cannot tell whose licence covers these bundled libraries (no Debian "
                 "package owns them): " + ", ".join(unknown))
    components = []
    for package in sorted(set(owners.values())):
        put(Path("/usr/share/doc") / package / "copyright", licenses / "debian" / package / "copyright")
        libs = sorted(lib for lib, owner in owners.items() if owner == package)
        components.append(Component(f"{', '.join(libs)} (Debian package {package})",
                                    "see its copyright file", [f"debian/{package}/copyright"]))
    return components


def collect_licenses(bundle: Path, doc: Path) -> str:
    """Copy every bundled component's licence under doc/licenses; the copyright file's text."""
    licenses = doc / "licenses"
    dists = runtime_distributions()
    components = [python_component(licenses)]
    components += [distribution_component(dist, licenses) for dist in dists]
    components += system_components(bundle, dists, licenses)
    lines = [f" {c.line()}" for c in components]
    return COPYRIGHT_HEAD + " .\n" + "\n".join(lines) + "\n"


def stage(bundle: Path, root: Path) -> None:
    """Lay the package's files out under `root` as they will be installed."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(bundle, root / APP_DIR, symlinks=True)
    put(HERE / NAME, root / "usr" / "bin" / NAME, 0o755)
    put(RESOURCES / f"{NAME}.desktop", root / "usr/share/applications" / f"{NAME}.desktop")
    put(RESOURCES / "io.github.smolvlm_desktop.metainfo.xml",
        root / "usr/share/metainfo/io.github.smolvlm_desktop.metainfo.xml")
    icons = root / "usr/share/icons/hicolor"
    for size in ICON_SIZES:
        put(RESOURCES / "icons" / f"{NAME}-{size}.png", icons / f"{size}x{size}/apps/{NAME}.png")
    put(RESOURCES / f"{NAME}.svg", icons / "scalable/apps" / f"{NAME}.svg")
    doc = root / DOC_DIR
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(collect_licenses(bundle, doc), encoding="utf-8")
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
    deps = depends(root / APP_DIR)
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
