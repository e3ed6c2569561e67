"""The main window: empty states, drag and drop, paste, themes, settings, closing mid-run."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QMimeData  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QColor  # noqa: E402

from smolvlm_desktop import settings as settings_mod  # noqa: E402
from smolvlm_desktop.settings import Settings  # noqa: E402
from ui_helpers import TIMEOUT_MS, Gate, add_images, make_image, open_window, shoot  # noqa: E402

pytestmark = pytest.mark.gui


def test_no_model_installed_shows_the_friendly_empty_state(qtbot) -> None:
    window = open_window(qtbot, model=None)
    assert window.pages.currentWidget() is window.no_model
    chooser = window.no_model.chooser
    assert "models pull SmolVLM-256M-Instruct" in chooser.command.text()
    assert chooser.demo_btn.isVisible() and chooser.folder_btn.isVisible()
    assert not window.demo_banner.isVisible()
    shoot(window, "01-no-model")
    chooser.demo_btn.click()  # the user starts the demo model from the empty state
    qtbot.waitUntil(lambda: window.model_state == "ready", timeout=TIMEOUT_MS)
    assert window.pages.currentWidget() is window.workspace
    assert window.demo_banner.isVisible() and "random" in window.demo_banner.text()
    assert "tiny-smolvlm" in window.status.model_label.text()


def test_demo_model_shows_banner_and_drop_zone(qtbot) -> None:
    window = open_window(qtbot)
    assert window.model_state == "ready"
    assert window.demo_banner.isVisible()
    assert window.gallery.currentWidget() is window.gallery.drop_zone
    assert "CPU" in window.status.model_label.text()
    shoot(window, "02-demo-empty-gallery")


def test_drop_files_and_a_folder_with_a_bad_file(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot)
    single = make_image(tmp_path / "single.png")
    folder = tmp_path / "holiday"
    inside = [make_image(folder / "beach.png", (30, 140, 200)),
              make_image(folder / "sub" / "hill.jpg", (60, 160, 60), orientation=6)]
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    add_images(qtbot, window, [single, folder])
    listed = window.gallery.paths(readable_only=False)
    assert set(listed) >= {str(single), *map(str, inside)}
    qtbot.waitUntil(lambda: window.gallery.error_for(str(broken)) is not None, timeout=TIMEOUT_MS)
    assert set(window.gallery.paths()) == {str(single), *map(str, inside)}
    item = window.gallery.item_for(str(broken))
    assert "Cannot be read" in item.toolTip()
    from smolvlm_desktop.ui.gallery import SIZE_ROLE

    hill = window.gallery.item_for(str(inside[1])).data(SIZE_ROLE)
    assert hill.height() > hill.width()  # EXIF orientation 6: the 4:3 landscape is shown upright
    assert window.gallery.selected_paths() == [listed[0]]  # something is ready to ask about
    shoot(window, "03-images-loaded-with-one-broken")


def test_drag_of_something_that_is_not_a_file_is_refused(qtbot) -> None:
    window = open_window(qtbot)
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtGui import QDragEnterEvent
    from PySide6.QtWidgets import QApplication

    mime = QMimeData()
    mime.setText("just some text")
    event = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, event)
    assert not event.isAccepted()


def test_paste_an_image_from_the_clipboard(qtbot) -> None:
    window = open_window(qtbot)
    image = QImage(80, 60, QImage.Format.Format_RGB32)
    image.fill(QColor("teal"))
    QGuiApplication.clipboard().setImage(image)
    window.actions["paste"].trigger()
    qtbot.waitUntil(lambda: len(window.gallery.paths()) == 1 and window.tasks.pending == 0,
                    timeout=TIMEOUT_MS)
    pasted = Path(window.gallery.paths()[0])
    assert pasted.is_file() and pasted.suffix == ".png"
    window.close()
    assert pasted.is_file()  # kept in the data folder: a chat about it can find it again


def test_dark_theme_applies_and_is_saved(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot)
    add_images(qtbot, window, [make_image(tmp_path / "a.png")])
    window.actions["theme_dark"].trigger()
    assert window.resolved_theme == "dark"
    assert window.palette().color(window.backgroundRole()).lightness() < 80
    assert settings_mod.load().theme == "dark"
    window.chat.ask("What is in the picture?")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    shoot(window, "07-dark-theme")
    window.actions["theme_light"].trigger()
    assert window.palette().color(window.backgroundRole()).lightness() > 200


def test_corrupt_settings_file_is_reported_and_kept(qtbot) -> None:
    path = settings_mod.settings_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"theme": "neon", "max_new_tokens": 12, "provider": "cpu",
                                "variant": "fp32", "idle_unload_minutes": 0}), encoding="utf-8")
    window = open_window(qtbot, settings=settings_mod.load())
    assert window.notice.isVisible() and "theme" in window.notice.toolTip()
    assert window.settings.max_new_tokens == 12
    window.close()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["max_new_tokens"] == 12 and data["theme"] == "system"


def test_window_geometry_is_remembered(qtbot) -> None:
    window = open_window(qtbot)
    window.resize(720, 580)
    window.close()
    saved = settings_mod.load()
    assert saved.window_geometry
    again = open_window(qtbot, settings=saved)
    assert (again.width(), again.height()) == (720, 580)


def test_a_model_that_fails_to_load_says_why(qtbot, tmp_path: Path) -> None:
    (tmp_path / "broken-model").mkdir()
    window = open_window(qtbot, model=str(tmp_path / "broken-model"))
    qtbot.waitUntil(lambda: window.model_state == "error", timeout=TIMEOUT_MS)
    assert window.pages.currentWidget() is window.no_model
    assert "could not be loaded" in window.no_model.error.text()
    shoot(window, "06-model-error")


def test_closing_while_an_answer_streams_cancels_and_joins_the_thread(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=Settings(max_new_tokens=400, variant="fp32", provider="cpu",
                                                  threads=1, idle_unload_minutes=0))
    add_images(qtbot, window, [make_image(tmp_path / "a.png")])
    gate = Gate()
    window.worker.token.connect(gate)
    window.chat.ask("Describe this image in detail.")
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    job = window.chat.job
    import threading

    threading.Timer(0.05, gate.open).start()
    window.close()  # must cancel, wait for the thread, and never warn "Destroyed while running"
    assert job.cancel.cancelled
    assert not window.thread.isRunning()


def test_preferences_dialog_validates_applies_and_saves(qtbot) -> None:
    from smolvlm_desktop.ui.settings_dialog import SettingsDialog

    window = open_window(qtbot)
    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    dialog.max_tokens.setValue(42)
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.seed.setValue(7)
    dialog.accept()
    assert (window.settings.max_new_tokens, window.settings.theme, window.settings.seed) == (42, "dark", 7)
    window.save_settings()
    saved = settings_mod.load()
    assert (saved.max_new_tokens, saved.theme, saved.seed) == (42, "dark", 7)
    assert window.settings.generation_settings().max_new_tokens == 42


def test_the_window_opens_without_importing_onnxruntime(tmp_path: Path) -> None:
    """The window must be up before the engine is even imported (start-up under 2 s)."""
    import subprocess
    import sys

    code = ("import sys; from PySide6.QtWidgets import QApplication; app = QApplication([]);"
            "from smolvlm_desktop.ui.main_window import MainWindow; w = MainWindow(persist=False);"
            "w.show(); app.processEvents(); print('onnxruntime' in sys.modules); w.close()")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "SMOLVLM_CONFIG_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_status_bar_names_a_cpu_fallback_from_directml_notes_that_cannot_occur_here(qtbot) -> None:
    """This onnxruntime build has no DirectML, so the engine cannot produce a fallback here:
    the notes are given as the engine words them; the model itself is the real demo model."""
    window = open_window(qtbot)
    assert window.model_state == "ready"
    assert "unavailable" not in window.status.model_label.text(), "no fallback on a plain CPU run"
    notes = {"vision_encoder": "dml: DmlExecutionProvider is not in this onnxruntime build",
             "decoder_model_merged": "dml: DmlExecutionProvider is not in this onnxruntime build"}
    window.worker.model_state.emit("ready", window.model_info, "", notes)
    qtbot.waitUntil(lambda: "(DirectML unavailable)" in window.status.model_label.text(),
                    timeout=TIMEOUT_MS)
    assert window.status.model_label.text().endswith("CPU (DirectML unavailable)")
    tip = window.status.model_label.toolTip()
    assert "vision runs on the CPU instead: dml: DmlExecutionProvider is not" in tip
    assert "text runs on the CPU instead" in tip
    assert not window.notice.isVisibleTo(window), "said once, in the status bar"
    label = window.status.model_label
    qtbot.waitUntil(lambda: label.width() >= label.sizeHint().width(), timeout=TIMEOUT_MS)  # laid out
    shoot(window.statusBar(), "14-status-cpu-fallback")
