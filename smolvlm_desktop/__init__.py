"""SmolVLM Desktop: understand images entirely offline.

Importing the package puts the Hugging Face libraries in offline mode (unless the user set the
variables themselves), so that nothing in the app can reach the network by accident. The one
exception is `hub.py`'s `pull`, which the user starts explicitly.
"""

import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
