"""The app entry: `--self-test` (the installers' smoke test) end to end on the demo model."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from smolvlm_desktop import app, settings as settings_mod  # noqa: E402

pytestmark = pytest.mark.gui


def test_self_test_passes_and_leaves_no_settings_behind(qtbot, capsys) -> None:
    assert app.main(["--self-test"]) == 0
    out = capsys.readouterr().out
    assert "self-test passed" in out and "batch captioned 2 images" in out
    assert not settings_mod.settings_path().exists()


def test_arguments_of_the_window_are_read() -> None:
    args = app.parse_args(["--demo", "--model", "x"])
    assert args.demo and args.model == "x" and not args.self_test


def test_self_test_prints_no_qt_noise(tmp_path) -> None:
    """The offscreen plugin's "does not support propagateSizeHints()" (three times) is
    dropped at the source, so CI and users need no grep to read the self-test's output."""
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "SMOLVLM_DATA_DIR": str(tmp_path / "d"),
           "SMOLVLM_CONFIG_DIR": str(tmp_path / "c"), "SMOLVLM_CACHE_DIR": str(tmp_path / "k")}
    done = subprocess.run([sys.executable, "-m", "smolvlm_desktop", "--self-test"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "self-test passed" in done.stdout
    assert done.stderr == ""
