"""Test-wide guards: offscreen Qt, no network, and a private data/config dir for every test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Before any test module imports onnxruntime: the package turns its telemetry off, and warns
# (an error under pytest's filters) when onnxruntime came first. Without this, a file that
# imports onnxruntime at its top could be run on its own only after another test file.
import smolvlm_desktop  # noqa: E402, F401

TINY_MODEL = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-smolvlm"


class NetworkBlocked(ConnectionRefusedError):
    """A test tried to open a network connection; the app must work with none.

    A ConnectionRefusedError (an OSError) so that library code treats it like a real refused
    connection and closes its socket.
    """


_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    if getattr(socket, "_smolvlm_allow_loopback", False) and _is_loopback(address):
        return _real_connect(self, address)
    raise NetworkBlocked(f"network connection attempted to {address!r}")


def _is_loopback(address: object) -> bool:
    host = address[0] if isinstance(address, tuple) else str(address)
    return host in ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Every test runs with Python sockets blocked; `@pytest.mark.loopback` allows 127.0.0.1 only."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "_smolvlm_allow_loopback",
                        request.node.get_closest_marker("loopback") is not None, raising=False)


@pytest.fixture(autouse=True)
def private_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the developer's real settings, models or library."""
    root = tmp_path_factory.mktemp("userdirs")
    monkeypatch.setenv("SMOLVLM_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("SMOLVLM_CONFIG_DIR", str(root / "config"))
    monkeypatch.setenv("SMOLVLM_CACHE_DIR", str(root / "cache"))
    monkeypatch.delenv("SMOLVLM_MODEL", raising=False)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    if not (TINY_MODEL / "config.json").is_file():
        pytest.fail(f"the tiny test model is missing at {TINY_MODEL}; run scripts/build_tiny_model.py")
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    """One loaded fp32 tiny model for the whole session (sessions are slow to create)."""
    from smolvlm_desktop.engine.model import VisionLanguageModel

    return VisionLanguageModel.load(tiny_model_dir, variant="fp32", provider="cpu", threads=1)
