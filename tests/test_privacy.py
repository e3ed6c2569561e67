"""Nothing phones home: ONNX Runtime's telemetry is off in every face, and CI's privacy check
(scripts/privacy_check.py) really fails on a socket or a stray file.

onnxruntime (1.32 on Linux) starts its telemetry when it is *imported*: it writes
~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and resolves its collector's host about 9 s
later. Only ORT_DISABLE_TELEMETRY=1, set before that import, stops both (measured: the
`disable_telemetry_events()` call after the import does not). So these tests check the order:
the variable is set by the time onnxruntime is imported, whichever face is started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A meta-path hook that records ORT_DISABLE_TELEMETRY at the moment onnxruntime is imported,
# then runs the given face's import (and, for the window, nothing that needs a display).
_RECORDER = """
    import os, sys
    seen = []
    class Recorder:
        def find_spec(self, name, path=None, target=None):
            if name == "onnxruntime" and not seen:
                seen.append(os.environ.get("ORT_DISABLE_TELEMETRY"))
            return None
    sys.meta_path.insert(0, Recorder())
    {body}
    import onnxruntime  # imported by now in every face that runs a model; harmless otherwise
    print("telemetry-at-import:", seen[0])
"""

FACES = {
    "cli": "from smolvlm_desktop.cli import main",
    "python-api": "from smolvlm_desktop.engine.model import VisionLanguageModel",
    "engine-runtime-first": "import smolvlm_desktop.engine.runtime",
    "window-worker": "import smolvlm_desktop.worker",
    "frozen-entry": "import runpy, sys; sys.argv = ['x', '--version']\n"
                    "try:\n    runpy.run_path('installers/entry.py', run_name='not-main')\n"
                    "except SystemExit:\n    pass\nimport smolvlm_desktop.cli",
}


@pytest.mark.parametrize("face", sorted(FACES))
def test_telemetry_is_off_before_onnxruntime_is_imported(face):
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    script = textwrap.dedent(_RECORDER.format(body=FACES[face].replace("\n", "\n    ")))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "telemetry-at-import: 1" in done.stdout, done.stdout + done.stderr


def test_a_user_cannot_switch_telemetry_back_on_by_accident():
    """The promise is the app's, not a default: ORT_DISABLE_TELEMETRY=0 in the environment
    (from another tool's set-up) is overridden."""
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "0"}
    done = subprocess.run([sys.executable, "-c", "import smolvlm_desktop, os; "
                           "print(os.environ['ORT_DISABLE_TELEMETRY'])"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "1", done.stderr


def test_importing_onnxruntime_first_is_reported():
    """A Python API user who imported onnxruntime before the app cannot be protected any more
    (its telemetry is already running): say so, with what to do, instead of staying silent."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    done = subprocess.run([sys.executable, "-W", "always", "-c",
                           "import onnxruntime; import smolvlm_desktop"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ORT_DISABLE_TELEMETRY=1" in done.stderr
    assert "before onnxruntime" in done.stderr


NETWORK_MODULES = {"socket", "ssl", "http", "urllib", "httpx", "httpx2", "requests", "aiohttp",
                   "huggingface_hub", "websocket", "websockets", "ray"}


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# app.py wakes Qt's event loop on a signal through socket.socketpair(): a pair of connected
# local sockets (AF_UNIX; loopback on Windows), never an address outside the machine.
LOCAL_SOCKETS = {"smolvlm_desktop/app.py": {"socket"}}
# cluster.py is `caption --cluster` alone: Ray, to the cluster at the address the user gives
# (the window, the API and a batch without --cluster never import it: test_caption_step.py),
# and socket for one TCP connection to that same address first (an address where nothing
# answers is a quick error instead of Ray's minutes of retries).
CLUSTER = {"smolvlm_desktop/cluster.py": {"ray", "socket"}}


def test_only_hub_py_imports_a_network_module():
    """The house rule: hub.py is the only code that may open a connection (models pull/build).
    urllib.parse only splits strings, so it is allowed; everything else in the list is not."""
    package = REPO / "smolvlm_desktop"
    offenders = {}
    for path in package.rglob("*.py"):
        if path.name == "hub.py" and path.parent == package:
            continue
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(REPO))
        bad = (_imported_modules(path) & NETWORK_MODULES - LOCAL_SOCKETS.get(name, set())
               - CLUSTER.get(name, set()))
        if bad == {"urllib"} and "urllib.parse" in text and "urllib.request" not in text:
            bad = set()
        if bad:
            offenders[name] = sorted(bad)
    assert offenders == {}
