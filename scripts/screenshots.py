"""Render every main page of the window, light and dark, at 1024x700 into docs/screenshots/.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshots.py [OUT_DIR]

The README shows these pictures; run this after changing what a page looks like. It uses the
bundled demo model (its answers are random words), the bundled tiny CLIP installed as the
embedding model (so the Library page searches by meaning; its rankings are noise too) and the
sample images in resources/samples, with a private temporary data, config and cache folder:
nothing of yours is read or written.
The PNGs are reduced to 64 colours so the whole set stays a few hundred KB.

tests/test_screenshots.py stages the same pages and fails when a page's main action (Send,
Start batch, the library search, Download a model) is not wholly in view at this size.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SIZE = (1024, 700)  # the smallest window size the app promises to lay out well
WIDE_SIZE = (1600, 1000)  # wide enough for the image preview beside the chat
THEMES = ("light", "dark")
PAGES = ("chat", "batch", "library", "library-more", "no-model")
SAMPLES = ROOT / "resources" / "samples"


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Run the Qt event loop until condition() holds (the worker answers on its own thread)."""
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not reach the state to photograph")
        QApplication.processEvents()
        time.sleep(0.01)


def install_demo_embedding_model() -> None:
    """Search by meaning needs an embedding model: the bundled tiny CLIP, installed into the
    private data folder as a downloaded one would be (never a chat model, so the first-start
    page still says no model is installed)."""
    from smolvlm_desktop import hub, paths

    if not paths.installed_models(paths.EMBEDDING):
        hub.import_folder(paths.demo_embedding_model_dir(), name="tiny-clip")


def open_window(work: Path, model: bool = True) -> Any:
    """A real main window on the demo model, settled, with the sample images in its gallery
    (and indexed for search by meaning); model=False: the first start with no model installed."""
    from smolvlm_desktop.settings import Settings
    from smolvlm_desktop.ui.main_window import MainWindow

    install_demo_embedding_model()
    window = MainWindow(Settings(max_new_tokens=24, variant="fp32", provider="cpu", threads=1,
                                 idle_unload_minutes=0), persist=True)
    window.show()
    if not model:
        window.start_model()  # nothing is installed in the private data folder
        return window
    window.start_model(demo=True)
    wait_until(lambda: window.model_state in ("ready", "error"))
    photos = work / "photos"
    if not photos.is_dir():
        shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.py", "*.json"))
    window.add_paths([str(p) for p in sorted(photos.glob("*.png"))])
    wait_until(lambda: len(window.gallery.paths()) == 3 and window.tasks.pending == 0)
    wait_until(lambda: window.library.indexing is None and not window.library.index_queue)
    return window


def stage(window: Any, page: str, work: Path) -> Any:
    """Put the window on `page` in a typical state; returns that page's main action widget.
    "no-model" wants a window from open_window(work, model=False)."""
    if page == "chat":
        window.gallery.select_paths([str(work / "photos" / "fruit.png")])
        if not window.chat.histories:
            window.chat.ask("Which fruits are in the bowl?")
            wait_until(lambda: not window.chat.busy)
        window.show_chat()
        return window.chat_panel.send_btn
    if page == "batch":
        window.show_batch()
        window.batch_panel.setCurrentWidget(window.batch_panel.setup)
        window.batch_panel.setup.folder_edit.setText(str(work / "photos"))
        return window.batch_panel.setup.start_btn
    if page == "library":  # by meaning and by the chat's words together
        window.library_search()
        window.library_panel.search.setText("fruits in the bowl")
        window.library.search_now()
        wait_until(lambda: window.tasks.pending == 0 and window.library_panel.hits.count() == 3)
        return window.library_panel.search
    if page == "library-more":  # Library ▸ More like the selected image, on house.png
        window.gallery.select_paths([str(work / "photos" / "house.png")])
        window.actions["more_like_selected"].trigger()
        wait_until(lambda: window.library_panel.count.text().startswith("More like house.png")
                   and window.tasks.pending == 0)
        return window.library_panel.search
    if page == "no-model":
        assert window.pages.currentWidget() is window.no_model, "open_window(work, model=False)"
        return window.no_model.chooser.download_btn
    raise ValueError(f"unknown page {page!r}; pages: {', '.join(PAGES)}")


def photograph(window: Any, theme_name: str, size: tuple[int, int] = SIZE) -> Any:
    """The window at `size` in this theme, as a QImage."""
    from PySide6.QtWidgets import QApplication

    window.set_theme(theme_name)
    window.resize(*size)
    QApplication.processEvents()
    return window.grab().toImage()


def save_small(image: Any, target: Path) -> None:
    """Save a screenshot with a 64-colour palette (a flat UI loses nothing visible)."""
    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    import io

    picture = Image.open(io.BytesIO(bytes(buffer.data().data()))).convert("RGB")
    picture.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def render_all(out_dir: Path) -> list[Path]:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    with tempfile.TemporaryDirectory(prefix="smolvlm-shots-") as tmp:
        work = Path(tmp)
        windows = {True: open_window(work), False: open_window(work, model=False)}
        try:
            for page in PAGES:
                window = windows[page != "no-model"]
                stage(window, page, work)
                for theme_name in THEMES:
                    target = out_dir / f"{page}-{theme_name}.png"
                    save_small(photograph(window, theme_name), target)
                    saved.append(target)
                if page == "chat":  # wide: the selected image and its tiles beside the chat
                    target = out_dir / "chat-wide-light.png"
                    save_small(photograph(window, "light", WIDE_SIZE), target)
                    saved.append(target)
        finally:
            for window in windows.values():
                window.close()
            app.processEvents()
    return saved


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "screenshots"
    private = Path(tempfile.mkdtemp(prefix="smolvlm-shots-home-"))
    for name in ("DATA", "CONFIG", "CACHE"):
        os.environ[f"SMOLVLM_{name}_DIR"] = str(private / name.lower())
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    try:
        for path in render_all(out_dir):
            print(f"{path}  {path.stat().st_size // 1024} KB")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
