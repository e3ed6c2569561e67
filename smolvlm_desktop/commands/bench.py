"""`smolvlm-desktop bench [options]`: the speed benchmark in bench/run.py.

The benchmark lives in the source tree's bench/ folder, not in the installed package: it
builds a 2 GB random-weight model and needs the export extra (torch, transformers, onnx),
which no end user of the app needs. So it runs from a source checkout: the one the package
was installed from in editable mode (`scripts/setup.sh --dev`), or, after a plain
`pip install .` (`scripts/setup.sh`), the checkout the command is run from. Anywhere else,
or without the export extra, it says in one line exactly what to run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import EXIT_ERROR, print_error

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, in an editable install
REPOSITORY = "https://github.com/smolvlm-desktop/smolvlm-desktop"
SET_UP = "./scripts/setup.sh --dev && .venv/bin/smolvlm-desktop bench"


def is_checkout(folder: Path) -> bool:
    return (folder / "bench" / "run.py").is_file() and (folder / "smolvlm_desktop").is_dir()


def source_tree() -> Path | None:
    """The checkout holding bench/: the installed package's own, else the working folder's."""
    if is_checkout(SOURCE_ROOT):
        return SOURCE_ROOT
    here = Path.cwd().resolve()
    return next((folder for folder in (here, *here.parents) if is_checkout(folder)), None)


def missing_export_extra() -> list[str]:
    """The export extra's packages that are not installed (bench builds its model with them)."""
    from importlib.util import find_spec

    missing = []
    for name in ("torch", "transformers", "onnx"):
        try:
            found = sys.modules[name] if name in sys.modules else find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            missing.append(name)
    return missing


def run_bench(rest: list[str]) -> int:
    """Run bench/run.py's main with the arguments that followed `bench`."""
    root = source_tree()
    if root is None:
        print_error(f"the benchmark is part of the source code, not of the installed app: "
                    f"git clone {REPOSITORY} && cd smolvlm-desktop && {SET_UP}")
        return EXIT_ERROR
    missing = missing_export_extra()
    if missing:
        print_error(f"the benchmark needs the export extra ({', '.join(missing)} missing): "
                    f"in {root} run {SET_UP}")
        return EXIT_ERROR
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.run import main

    return main(list(rest))
