"""SmolVLM Desktop: understand images entirely offline.

Importing the package puts the Hugging Face libraries in offline mode (unless the user set the
variables themselves), so that nothing in the app can reach the network by accident. The one
exception is `hub.py`'s `pull`, which the user starts explicitly.
"""

import os as _os

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
