"""Fast checks of the installers and desktop resources; nothing here builds a bundle.

The real build (PyInstaller bundle, .deb, installed self-test) is .ci/installers.sh. These tests
catch the cheap mistakes before it: a spec that would let torch in, an invalid .desktop file or
AppStream file, icons that no longer match their SVG, recipes that name files that moved.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import json
import plistlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALLERS = ROOT / "installers"
RESOURCES = ROOT / "resources"
SPEC = INSTALLERS / "smolvlm-desktop.spec"
DESKTOP = RESOURCES / "smolvlm-desktop.desktop"
METAINFO = RESOURCES / "io.github.smolvlm_desktop.metainfo.xml"
ISS = INSTALLERS / "windows" / "smolvlm-desktop.iss"
NAME = "smolvlm-desktop"
APP_NAME = "SmolVLM Desktop"


def load_script(path: Path):
    """Import a script that is not in a package (scripts/, installers/) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def spec_constant(name: str):
    """A literal assigned at the top level of the PyInstaller spec (which only PyInstaller runs)."""
    for node in ast.parse(SPEC.read_text("utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not assigned in {SPEC.name}")


def app_version() -> str:
    from smolvlm_desktop import __version__

    return __version__


# --- the bundle spec -----------------------------------------------------------------------------

def test_spec_excludes_the_export_and_test_tool_chain():
    excludes = set(spec_constant("EXCLUDES"))
    for package in ("torch", "transformers", "optimum", "pytest", "tests", "onnxruntime.quantization"):
        assert package in excludes, f"the spec must exclude {package} explicitly"
    # The runtime itself must not be excluded by accident (onnx: `models pull` builds graphs).
    for package in ("onnxruntime", "PySide6", "PySide6.QtWidgets", "PySide6.QtSvg", "numpy",
                    "PIL", "tokenizers", "jinja2", "huggingface_hub", "smolvlm_desktop", "onnx"):
        assert package not in excludes


def test_bundle_check_refuses_what_the_spec_excludes():
    build_bundle = load_script(INSTALLERS / "build_bundle.py")
    for package in ("torch", "transformers", "optimum", "tests"):
        assert package in build_bundle.FORBIDDEN
    assert "onnx" not in build_bundle.FORBIDDEN  # `models pull` builds the graphs with it
    assert build_bundle.SIZE_LIMIT_MB <= 300


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="stand-in uses the Linux layout")
def test_bundle_check_flags_a_forbidden_package(tmp_path, monkeypatch):
    build_bundle = load_script(INSTALLERS / "build_bundle.py")
    monkeypatch.setattr(build_bundle, "archive_modules", lambda exe: ["smolvlm_desktop", "torch.nn"])
    top = tmp_path / NAME
    (top / "_internal" / "transformers").mkdir(parents=True)
    (top / "_internal" / "smolvlm_desktop" / "data" / "tiny-smolvlm").mkdir(parents=True)
    (top / "_internal" / "smolvlm_desktop" / "data" / "tiny-smolvlm" / "config.json").write_text("{}")
    (top / NAME).write_bytes(b"\x7fELF")
    problems, files, total = build_bundle.problems_in(tmp_path)
    assert any("transformers" in p for p in problems)
    assert any("torch.nn" in p for p in problems)
    assert not any("demo model" in p for p in problems)


def test_spec_icons_and_entitlements_exist():
    text = SPEC.read_text("utf-8")
    assert '"installers" / "macos" / "entitlements.plist"' in text
    assert (INSTALLERS / "macos" / "entitlements.plist").is_file()
    assert (RESOURCES / "icons" / f"{NAME}.ico").is_file()
    assert (RESOURCES / "icons" / f"{NAME}.icns").is_file()
    assert spec_constant("NAME") == NAME and spec_constant("APP_NAME") == APP_NAME
    assert (INSTALLERS / "entry.py").is_file()


# --- desktop integration files -------------------------------------------------------------------

def test_desktop_file_is_valid():
    if shutil.which("desktop-file-validate"):
        result = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True)
        assert result.returncode == 0 and "error" not in result.stdout, result.stdout
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # keys are case-sensitive
    entry.read(DESKTOP, encoding="utf-8")
    d = entry["Desktop Entry"]
    assert d["Type"] == "Application" and d["Name"] == APP_NAME
    assert d["Exec"].split()[0] == NAME == d["TryExec"]
    assert d["Icon"] == NAME
    assert d["Terminal"] == "false"
    assert d["Categories"].endswith(";")


def test_desktop_file_name_is_the_apps_desktop_id():
    """Wayland and GNOME match a window to its .desktop file by QGuiApplication.desktopFileName."""
    from smolvlm_desktop.paths import APP_ID

    assert DESKTOP.name == f"{APP_ID}.desktop"


def test_metainfo_is_valid():
    if shutil.which("appstreamcli"):
        result = subprocess.run(["appstreamcli", "validate", "--no-net", str(METAINFO)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    component = ET.parse(METAINFO).getroot()
    assert component.tag == "component" and component.get("type") == "desktop-application"
    assert component.findtext("id") == "io.github.smolvlm_desktop" == METAINFO.name.removesuffix(".metainfo.xml")
    assert component.findtext("launchable") == DESKTOP.name
    assert component.findtext("metadata_license") == "CC0-1.0"
    assert component.findtext("name") == APP_NAME
    assert component.find("provides/binary").text == NAME
    versions = [r.get("version") for r in component.iter("release")]
    assert app_version() in versions, "add a <release> for the app's version to the metainfo"


def test_sample_images_listed_and_readable():
    from PIL import Image

    index = json.loads((RESOURCES / "samples" / "samples.json").read_text("utf-8"))
    assert len(index) >= 2
    for sample in index:
        assert sample["title"] and sample["prompt"]
        with Image.open(RESOURCES / "samples" / sample["file"]) as image:
            assert image.format == "PNG" and max(image.size) <= 1024


# --- icons ---------------------------------------------------------------------------------------

def test_icon_set_is_complete():
    make_icons = load_script(ROOT / "scripts" / "make_icons.py")
    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        assert size in make_icons.PNG_SIZES
        assert (RESOURCES / "icons" / f"{NAME}-{size}.png").is_file()
    ico = make_icons.frames((RESOURCES / "icons" / f"{NAME}.ico").read_bytes())
    assert {16, 32, 48, 256} <= set(ico)
    icns = make_icons.frames((RESOURCES / "icons" / f"{NAME}.icns").read_bytes())
    assert {32, 128, 256, 512, 1024} <= set(icns)


def test_icons_match_their_svg_source(qapp, tmp_path):
    """Regenerate every icon into a temporary folder and compare with the committed files."""
    make_icons = load_script(ROOT / "scripts" / "make_icons.py")
    assert make_icons.main(["--out", str(tmp_path)]) == 0
    for fresh in sorted(tmp_path.iterdir()):
        committed = RESOURCES / "icons" / fresh.name
        assert committed.is_file(), f"{fresh.name} is not committed"
        want, have = make_icons.frames(fresh.read_bytes()), make_icons.frames(committed.read_bytes())
        assert sorted(want) == sorted(have), fresh.name
        for size in want:
            why = make_icons.difference(want[size], have[size])
            assert why is None, f"{fresh.name} at {size} px differs from the SVG ({why}): " \
                                "run python scripts/make_icons.py"


def test_icon_check_notices_a_changed_drawing(qapp, tmp_path):
    make_icons = load_script(ROOT / "scripts" / "make_icons.py")
    changed = tmp_path / "changed.svg"
    changed.write_text((RESOURCES / f"{NAME}.svg").read_text("utf-8").replace("#ffb300", "#00ff00"))
    assert make_icons.check(RESOURCES / "icons", changed)


# --- the .deb ------------------------------------------------------------------------------------

def test_deb_layout_from_a_stand_in_bundle(tmp_path):
    """stage() puts every file where Debian expects it, with Debian's modes."""
    build_deb = load_script(INSTALLERS / "linux" / "build_deb.py")
    bundle = tmp_path / "bundle"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / NAME).write_text("#!/bin/sh\necho stand-in\n")
    (bundle / NAME).chmod(0o700)
    (bundle / "_internal" / "data.txt").write_text("x")
    root = tmp_path / "root"
    build_deb.stage(bundle, root)
    expected = [f"usr/lib/{NAME}/{NAME}", f"usr/lib/{NAME}/_internal/data.txt", f"usr/bin/{NAME}",
                f"usr/share/applications/{NAME}.desktop",
                "usr/share/metainfo/io.github.smolvlm_desktop.metainfo.xml",
                f"usr/share/icons/hicolor/scalable/apps/{NAME}.svg",
                f"usr/share/doc/{NAME}/copyright"]
    expected += [f"usr/share/icons/hicolor/{s}x{s}/apps/{NAME}.png" for s in build_deb.ICON_SIZES]
    for rel in expected:
        assert (root / rel).is_file(), rel
    assert (root / "usr/bin" / NAME).stat().st_mode & 0o777 == 0o755
    assert (root / "usr/lib" / NAME / NAME).stat().st_mode & 0o777 == 0o755
    assert not (root / "opt").exists(), "Debian policy: /opt belongs to the local administrator"
    assert (root / "usr/share/applications" / f"{NAME}.desktop").stat().st_mode & 0o777 == 0o644
    # The launcher finds the app relative to itself, so the unpacked copy runs in a scratch root.
    result = subprocess.run([str(root / "usr/bin" / NAME)], capture_output=True, text=True)
    assert result.stdout == "stand-in\n"


def test_deb_carries_the_licence_of_every_bundled_component(tmp_path):
    """Read from the installed packages (this venv stands in for the build venv): Python,
    Qt for Python (LGPL via common-licenses, plus ICU's text), ONNX Runtime with its
    third-party notices, NumPy with OpenBLAS's, Pillow with its libraries', tokenizers."""
    build_deb = load_script(INSTALLERS / "linux" / "build_deb.py")
    bundle = tmp_path / "bundle"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / NAME).write_text("#!/bin/sh\n")
    root = tmp_path / "root"
    build_deb.stage(bundle, root)
    doc = root / f"usr/share/doc/{NAME}"
    licenses = doc / "licenses"
    copyright = (doc / "copyright").read_text("utf-8")
    assert "Python Software Foundation" in next((licenses / "python").iterdir()).read_text("utf-8")
    assert "ThirdPartyNotices.txt" in {p.name for p in (licenses / "onnxruntime").rglob("*")}
    assert "OpenBLAS" in (licenses / "numpy" / "LICENSE.txt").read_text("utf-8")
    assert "libjpeg" in (licenses / "pillow" / "LICENSE").read_text("utf-8").lower()
    assert "Unicode" in (licenses / "pyside6-essentials" / "ICU.txt").read_text("utf-8")
    for line in ("PySide6_Essentials", "shiboken6", "tokenizers"):
        entry = next(x for x in copyright.splitlines() if x.lower().startswith(f" {line.lower()} "))
        assert "/usr/share/common-licenses/" in entry, entry
    assert re.search(r"^ PySide6_Essentials .*/usr/share/common-licenses/LGPL-3", copyright, re.M | re.I)
    # every path the copyright file names is in the package or in Debian's common licences
    for rel in re.findall(r"(?:: |, )([\w./+-]+/[\w./+-]+)", copyright.split("bundled-components", 1)[1]):
        if rel.startswith("/usr/share/common-licenses/"):
            assert Path(rel).is_file(), rel
        elif not rel.startswith("http"):
            assert (licenses / rel).is_file(), rel


def test_deb_names_a_bundled_system_library_nobody_owns(tmp_path):
    """A system library PyInstaller copied in gives its Debian package's copyright file; one
    that no package owns stops the build instead of shipping without a licence."""
    build_deb = load_script(INSTALLERS / "linux" / "build_deb.py")
    if shutil.which("dpkg") is None:
        pytest.skip("needs dpkg")
    bundle = tmp_path / "bundle"
    (bundle / "_internal").mkdir(parents=True)
    zlib = next(p for p in (Path("/lib/x86_64-linux-gnu/libz.so.1"), Path("/usr/lib/x86_64-linux-gnu/libz.so.1"),
                            Path("/lib/aarch64-linux-gnu/libz.so.1")) if p.exists())
    shutil.copyfile(zlib, bundle / "_internal" / "libz.so.1")
    found = build_deb.system_components(bundle, [], tmp_path / "licenses")
    assert [c.files for c in found] == [["debian/zlib1g/copyright"]]
    assert (tmp_path / "licenses/debian/zlib1g/copyright").is_file()
    shutil.copyfile(zlib, bundle / "_internal" / "libmystery.so.7")
    with pytest.raises(SystemExit, match="libmystery.so.7"):
        build_deb.system_components(bundle, [], tmp_path / "licenses")


def test_deb_control_fields(tmp_path):
    build_deb = load_script(INSTALLERS / "linux" / "build_deb.py")
    text = build_deb.control("amd64", 1234, ["libc6 (>= 2.36)", "libgl1"])
    fields = dict(line.split(": ", 1) for line in text.splitlines() if line and not line.startswith(" "))
    assert fields["Package"] == NAME and fields["Version"] == app_version()
    assert fields["Installed-Size"] == "1234" and fields["Architecture"] == "amd64"
    for required in ("libgl1", "libegl1", "fontconfig-config", "fonts-dejavu-core"):
        assert required in build_deb.ALWAYS_DEPENDS
    # Every description line after the first is indented, as dpkg requires.
    assert all(line.startswith(" ") for line in text.split("Description:", 1)[1].splitlines()[1:] if line)


def test_deb_refuses_an_unknown_system_library(tmp_path, monkeypatch):
    build_deb = load_script(INSTALLERS / "linux" / "build_deb.py")
    monkeypatch.setattr(build_deb, "system_requirements",
                        lambda bundle: ({"libGL.so.1", "libsomethingnew.so.3"}, "2.36"))
    with pytest.raises(SystemExit, match="libsomethingnew"):
        build_deb.depends(tmp_path)
    monkeypatch.setattr(build_deb, "system_requirements", lambda bundle: ({"libGL.so.1"}, "2.36"))
    assert build_deb.depends(tmp_path)[0] == "libc6 (>= 2.36)"


def test_launcher_is_valid_shell():
    launcher = INSTALLERS / "linux" / NAME
    subprocess.run(["sh", "-n", str(launcher)], check=True)
    assert f"../lib/{NAME}/{NAME}" in launcher.read_text("utf-8")


# --- Windows and macOS recipes (built on those systems; checked here) ---------------------------

def test_inno_setup_script_references_existing_files():
    text = ISS.read_text("utf-8")
    paths = re.findall(r'(?:Source: "|SetupIconFile=)\{#Root\}\\([^"\r\n*]+)', text)
    assert paths, "no {#Root}-relative paths found"
    for rel in paths:
        rel = rel.rstrip("\\")
        if rel.startswith("dist\\"):
            # Made by build_bundle.py before ISCC runs: the folder name must be the one it makes.
            assert rel == f"dist\\{NAME}", rel
            continue
        assert (ROOT / rel.replace("\\", "/")).exists(), rel
    assert f'#define GuiExe "{APP_NAME}.exe"' in text and f'#define CliExe "{NAME}.exe"' in text
    assert re.search(r"AppId=\{\{[0-9A-F-]{36}\}", text)


def test_windows_build_script_references_existing_files():
    text = (INSTALLERS / "windows" / "build.ps1").read_text("utf-8")
    for rel in re.findall(r'"((?:installers|resources|smolvlm_desktop)\\[^"]+)"', text) + \
            re.findall(r"(smolvlm_desktop\\__init__\.py)", text):
        assert (ROOT / rel.replace("\\", "/")).is_file(), rel
    assert "onnxruntime-directml==" in text and "-Cpu" in text
    assert f"dist\\{NAME}\\{NAME}.exe" in text


def test_macos_recipe_references_existing_files():
    text = (INSTALLERS / "macos" / "build.sh").read_text("utf-8")
    for rel in ("installers/build_bundle.py", "resources/samples/house.png", "pyproject.toml"):
        assert rel in text and (ROOT / rel).is_file()
    assert f'dist/{APP_NAME}.app' in text and "hdiutil create" in text
    subprocess.run(["bash", "-n", str(INSTALLERS / "macos" / "build.sh")], check=True)
    with (INSTALLERS / "macos" / "entitlements.plist").open("rb") as f:
        assert isinstance(plistlib.load(f), dict)
    assert spec_constant("BUNDLE_ID") == "io.github.smolvlm_desktop"


def test_ci_script_is_valid_shell():
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / "installers.sh")], check=True)
