"""Helpers for the GUI tests: real images, real drag and drop events, screenshots, a window."""

from __future__ import annotations

import os
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PIL import Image, ImageDraw  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 30_000  # generous: the machine is shared; tests never assert timings


def make_image(path: Path, colour: tuple[int, int, int] = (200, 80, 40), size: tuple[int, int] = (160, 120),
               orientation: int | None = None) -> Path:
    """A small real image; `orientation` writes an EXIF Orientation tag."""
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 4, size[1] // 6, size[0] * 3 // 4, size[1] * 5 // 6), fill=(245, 245, 245))
    draw.rectangle((0, 0, size[0] // 5, size[1] // 5), fill=(20, 20, 20))  # marks the top-left corner
    path.parent.mkdir(parents=True, exist_ok=True)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif)
    else:
        image.save(path)
    return path


def drag_and_drop(widget: QWidget, paths: list[Path]) -> bool:
    """Drag local files over `widget` and drop them; returns whether the drag was accepted."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    # Qt 6 takes a QPoint for drag-enter but a QPointF for drop.
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    actions = Qt.DropAction.CopyAction
    enter = QDragEnterEvent(pos.toPoint(), actions, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    drop = QDropEvent(pos, actions, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)
    return True


def shoot(widget: QWidget, name: str) -> Path:
    """Save a screenshot of a real state into test-artifacts/ (looked at by a person)."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / f"{name}.png"
    assert widget.grab().save(str(target)), f"could not save {target}"
    return target


class Gate:
    """Holds the worker thread inside a signal handler until the test opens it.

    Connected to a worker signal as a plain function, the handler runs *in the worker thread*
    (PySide6 semantics), so the engine pauses at a known point: the test can click Stop,
    Pause or close the window while work is provably under way, without timing guesses.
    """

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()

    def __call__(self, *args: object) -> None:
        self.reached.set()
        self.opened.wait(TIMEOUT_MS / 1000)

    def open(self) -> None:
        self.opened.set()


__all__ = ["ARTIFACTS", "Gate", "TIMEOUT_MS", "drag_and_drop", "make_image", "shoot"]


def open_window(qtbot, settings=None, model: str | None = "demo", persist: bool = True):
    """A real MainWindow with its real worker thread; closed (and the thread joined) at teardown.

    model="demo" starts the bundled tiny model and waits until it is ready; None leaves the
    window to find a model itself (none is installed in the tests' private data dir).
    """
    from smolvlm_desktop.settings import Settings
    from smolvlm_desktop.ui.main_window import MainWindow

    settings = settings if settings is not None else Settings(
        max_new_tokens=8, variant="fp32", provider="cpu", threads=1, idle_unload_minutes=0)
    window = MainWindow(settings, persist=persist)
    qtbot.addWidget(window)
    window.show()
    window.start_model(None if model == "demo" else model, demo=model == "demo")
    if model is not None:
        qtbot.waitUntil(lambda: window.model_state in ("ready", "error"), timeout=TIMEOUT_MS)
    return window


def add_images(qtbot, window, paths: list[Path]) -> None:
    """Drop files on the window and wait until every thumbnail has been decoded."""
    assert drag_and_drop(window, paths)
    qtbot.waitUntil(lambda: window.tasks.pending == 0 and len(window.gallery.paths(False)) >= len(paths),
                    timeout=TIMEOUT_MS)


def answer_next_dialog(button_text: str, seen: list[str] | None = None) -> None:
    """Click the button labelled `button_text` on the next modal QMessageBox, as a user would
    (the dialog is real and modal: this polls for it from the event loop it runs)."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QMessageBox

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, answer)
            return
        if seen is not None:
            seen.append(box.text())
        match = [b for b in box.buttons() if b.text().replace("&", "") == button_text]
        assert match, f"no {button_text!r} button in {[b.text() for b in box.buttons()]}"
        match[0].click()

    QTimer.singleShot(0, answer)


SHOTS = Path(os.environ.get("SMOLVLM_SHOTS") or ARTIFACTS)  # where shoot_themes puts its pictures


def shoot_themes(widget, name: str, size: tuple[int, int] = (1024, 700)) -> list[Path]:
    """Screenshot a window (or a dialog of one) in the light and the dark theme at `size`
    (1024x700: the smallest size we promise). Ends in the light theme. $SMOLVLM_SHOTS chooses
    the folder."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    owner = widget if hasattr(widget, "set_theme") else widget.parent()
    saved = []
    for name_of_theme in ("dark", "light"):
        owner.set_theme(name_of_theme)
        widget.resize(*size)
        QApplication.processEvents()
        target = SHOTS / f"{name}-{name_of_theme}.png"
        assert widget.grab().save(str(target)), f"could not save {target}"
        saved.append(target)
    return saved
