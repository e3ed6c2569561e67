"""`smolvlm-desktop bench [options]`: the speed benchmark in bench/run.py.

The benchmark lives in the source tree's bench/ folder, not in the installed package: it
builds a 2 GB random-weight model and needs the export extra (torch, transformers, onnx),
which no end user of the app needs. So this command works from a source checkout (editable
install) and says so clearly anywhere else.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import EXIT_ERROR

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def run_bench(rest: list[str]) -> int:
    """Run bench/run.py's main with the arguments that followed `bench`."""
    if not (SOURCE_ROOT / "bench" / "run.py").is_file():
        print("smolvlm-desktop: the benchmark ships with the source code (bench/run.py); "
              "run it from a git checkout", file=sys.stderr)
        return EXIT_ERROR
    if str(SOURCE_ROOT) not in sys.path:
        sys.path.insert(0, str(SOURCE_ROOT))
    from bench.run import main

    return main(list(rest))
