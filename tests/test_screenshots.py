"""Every main page, light and dark, at 1024x700 (the smallest size we promise): its main action
(Send, Start batch, the library search, Download a model) must be wholly in view, not below
the fold nor clipped by a scroll area. The pages are staged by scripts/screenshots.py, the
script that renders the README's pictures, so what is tested is what is shown."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytestmark = pytest.mark.gui

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "screenshots.py"


def load_script():
    spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wholly_in_view(widget, window) -> bool:
    """Shown, not clipped by any parent (a scroll area's viewport), inside the window."""
    if not widget.isVisible():
        return False
    if widget.visibleRegion().boundingRect() != widget.rect():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    bottom_right = widget.mapTo(window, widget.rect().bottomRight())
    return window.rect().contains(top_left) and window.rect().contains(bottom_right)


def test_every_page_shows_its_main_action_in_both_themes_at_1024x700(qtbot, tmp_path: Path) -> None:
    shots = load_script()
    windows = {True: shots.open_window(tmp_path), False: shots.open_window(tmp_path, model=False)}
    for window in windows.values():
        qtbot.addWidget(window)
    out = Path(os.environ.get("SMOLVLM_SHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    hidden = []
    for page in shots.PAGES:
        window = windows[page != "no-model"]
        action = shots.stage(window, page, tmp_path)
        for theme_name in shots.THEMES:
            image = shots.photograph(window, theme_name)
            assert (image.width(), image.height()) == shots.SIZE
            image.save(str(out / f"page-{page}-{theme_name}.png"))
            if not wholly_in_view(action, window):
                hidden.append(f"{page} ({theme_name}): {action.text() or action.accessibleName()}")
    assert not hidden, f"main actions out of view at 1024x700: {hidden}"
