"""The Python package as a distribution would build it: one version, a licence, honest
dependencies with upper bounds where a minor release can break the app."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from smolvlm_desktop.cli import EXIT_OK, main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
PROJECT = PYPROJECT["project"]


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    listed = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return {canonical(r.name): r for r in map(Requirement, listed)}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_version_flag_prints_the_version_from_the_package_metadata(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == f"smolvlm-desktop {PROJECT['version']}\n"
    assert importlib.metadata.version("smolvlm-desktop") == PROJECT["version"]


def test_the_version_is_written_only_in_pyproject() -> None:
    import smolvlm_desktop

    assert smolvlm_desktop.__version__ == PROJECT["version"]
    literal = re.compile(r"""version\s*=\s*["']\d+\.\d+""", re.I)
    for path in [ROOT / "smolvlm_desktop" / "__init__.py", ROOT / "installers" / "smolvlm-desktop.spec",
                 ROOT / "installers" / "linux" / "build_deb.py", ROOT / "installers" / "macos" / "build.sh",
                 ROOT / "installers" / "windows" / "build.ps1"]:
        text = path.read_text("utf-8")
        assert not literal.search(text), f"{path.name} spells out a version"
        assert "__init__.py" not in text or "__version__" not in text, f"{path.name} reads __init__.py"


def test_build_needs_the_setuptools_that_reads_an_spdx_licence() -> None:
    """`license = "Apache-2.0"` (PEP 639) needs setuptools 77; a distribution building
    without isolation uses whatever setuptools the requirement allows."""
    assert isinstance(PROJECT["license"], str)
    (setuptools,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]
                     if Requirement(r).name == "setuptools"]
    assert "76.9" not in setuptools.specifier and "77.0" in setuptools.specifier


def test_dependencies_that_break_on_a_minor_release_have_upper_bounds() -> None:
    runtime = requirements()
    for name, first_untested in [("onnxruntime", "1.33"), ("tokenizers", "0.24"),
                                 ("pyside6-essentials", "6.12"), ("huggingface-hub", "3")]:
        assert first_untested not in runtime[name].specifier, f"{name} allows {first_untested}"
    assert "6.0" not in requirements("export")["transformers"].specifier


def test_installed_versions_are_the_ones_declared() -> None:
    """The bounds describe what the suite runs against, not a wish."""
    declared = {**requirements(), **requirements("export")}
    for name, requirement in declared.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional extra not installed here
        assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed} !{requirement}"


def third_party_imports(package: Path) -> set[str]:
    """Top-level modules the package imports that are neither its own nor the standard library."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != package.name}


def test_every_module_the_app_imports_is_declared() -> None:
    """hub.py imports httpx2 and the CLI tqdm directly: a dependency of a dependency is not a
    promise, so each is declared in its own right (or in the extra that uses it)."""
    declared = set(requirements())
    for extra in PROJECT["optional-dependencies"]:
        declared |= set(requirements(extra))
    owners = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in third_party_imports(ROOT / "smolvlm_desktop"):
        dists = {canonical(d) for d in owners.get(module, [])}
        if dists and not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


@pytest.mark.slow
def test_wheel_carries_licence_type_marker_urls_and_classifiers(tmp_path: Path) -> None:
    """Built as a distribution does: from a copy of the tracked files, without isolation."""
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    for rel in tracked.stdout.decode().split("\0"):
        if rel and (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--wheel-dir", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert "Apache License" in zf.read(licence).decode() and "Version 2.0" in zf.read(licence).decode()
    assert "smolvlm_desktop/py.typed" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert re.search(r"^Project-URL: Source, https://", metadata, re.M)
    assert "Classifier: Programming Language :: Python :: 3.11" in metadata
    assert re.search(r"^Requires-Dist: tqdm", metadata, re.M)
    assert re.search(r"^Requires-Dist: onnxruntime.*<1\.33", metadata, re.M)
