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
