"""SmolVLM Desktop: understand images entirely offline.

Importing the package is the first thing every face does (the window, the CLI, the Python
API, the installers' frozen entry point), so this is where the app switches off what would
reach the network behind the user's back:

- ONNX Runtime's telemetry. onnxruntime starts it when it is *imported*: it records events
  (OS, CPU, the program's path) in ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and
  resolves its collector's host about 9 s into a run. Only ORT_DISABLE_TELEMETRY=1 set
  before that import stops both (measured on onnxruntime 1.32 under strace; its
  `disable_telemetry_events()` call, made after the import, does not). It is forced, not a
  default: the promise is the app's. `engine/runtime.py` also calls that function, for the
  platforms where it is the switch.
- The Hugging Face libraries go offline (unless the user set these variables themselves), so
  that nothing reaches the Hub by accident; `hub.py` lifts it for `models pull`/`build` only.
"""

import os as _os
import sys as _sys
import warnings as _warnings

if "onnxruntime" in _sys.modules and _os.environ.get("ORT_DISABLE_TELEMETRY") != "1":
    _warnings.warn(
        "onnxruntime was imported before smolvlm_desktop, so its telemetry is already running "
        "in this process. Set ORT_DISABLE_TELEMETRY=1 in the environment, or import "
        "smolvlm_desktop before onnxruntime, to keep it off.", RuntimeWarning, stacklevel=2)
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"

_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def __getattr__(name: str) -> str:
    """`smolvlm_desktop.__version__`, read on first use from the installed package's metadata,
    so that pyproject.toml is the one place the version is written (PEP 562: no cost at import)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smolvlm-desktop")
    except PackageNotFoundError:  # a source tree put on sys.path by hand, never installed
        return "0+unknown"
