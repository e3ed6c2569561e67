"""Issue 15: the window as a first-time user meets it. Each test is one defect a user met,
on the real window, real worker thread and the demo model."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from smolvlm_desktop.settings import Settings  # noqa: E402
from ui_helpers import TIMEOUT_MS, Gate, add_images, make_image, open_window, shoot_themes  # noqa: E402

pytestmark = pytest.mark.gui


def small_settings(**changes) -> Settings:
    values = dict(max_new_tokens=4, variant="fp32", provider="cpu", threads=1, idle_unload_minutes=0)
    values.update(changes)
    return Settings(**values)


# --- A. an empty batch folder field ------------------------------------------------------------

def test_an_empty_batch_folder_never_captions_the_folder_the_app_started_in(
        qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started_in = tmp_path / "home"
    make_image(started_in / "holiday.png")
    monkeypatch.chdir(started_in)
    window = open_window(qtbot, settings=small_settings(last_folder=""))
    setup = window.batch_panel.setup
    window.show_batch()
    for typed in ("", "   ", "."):  # "." is the start folder too: only a full path is a choice
        setup.folder_edit.setText(typed)
        assert not setup.start_btn.isEnabled(), typed
        assert not setup.try_btn.isEnabled(), typed
        assert "Choose a folder" in setup.destination.text(), typed
        window.batch_start()  # Ctrl+B goes around the button
        assert window.batch.job is None and window.batch.trial is None
    shoot_themes(window, "A-batch-no-folder")
    assert not list(started_in.glob("*.txt"))
    photos = tmp_path / "photos"
    make_image(photos / "a.png")
    setup.folder_edit.setText(str(photos))
    assert setup.start_btn.isEnabled() and setup.try_btn.isEnabled()
    assert str(photos) in setup.destination.text(), "the page says where captions go"
    assert ".txt" in setup.destination.text()
    shoot_themes(window, "A-batch-folder-chosen")
