"""The library from the window, on the real worker thread and a real SQLite file: the resume
offer for an unfinished batch, chat answers recorded, search, and forgetting."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from smolvlm_desktop.settings import Settings  # noqa: E402
from ui_helpers import TIMEOUT_MS, add_images, make_image, open_window, shoot  # noqa: E402

pytestmark = pytest.mark.gui


def settings() -> Settings:
    return Settings(max_new_tokens=4, variant="fp32", provider="cpu", threads=1,
                    idle_unload_minutes=0)


def unfinished_job(folder: Path) -> int:
    """A batch job left 'running' with one image done and two pending, as a killed run leaves it."""
    from smolvlm_desktop.batch import BatchSettings
    from smolvlm_desktop.engine.types import GenerationSettings
    from smolvlm_desktop.library.db import Library

    images = [make_image(folder / f"img{i}.png", (60 * i, 90, 200 - 60 * i)) for i in range(3)]
    saved = BatchSettings(prompt="Name the colour.", generation=GenerationSettings(max_new_tokens=3),
                          outputs=("caption",), aggregate_dir=folder)
    with Library() as library:
        job_id = library.create_job({**saved.to_dict(), "model": "earlier-model"}, images)
        library.mark_done(job_id, images[0], "done before the crash", None)
    return job_id


def test_an_unfinished_batch_is_offered_and_resumes_with_its_own_settings(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.library.db import Library

    folder = tmp_path / "shoot"
    job_id = unfinished_job(folder)
    window = open_window(qtbot, settings())
    setup = window.batch_panel.setup
    qtbot.waitUntil(lambda: not setup.resume_bar.isHidden(), timeout=TIMEOUT_MS)
    assert "1 of 3 images are done, 2 still to caption" in setup.resume_bar.text.text()
    window.show_batch()
    shoot(window, "10-batch-resume-offer")
    setup.resume_btn.click()
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is window.batch_panel.summary,
                    timeout=TIMEOUT_MS)
    assert "Finished: 2 captioned" in window.batch_panel.summary.title.text()
    assert not (folder / "img0.caption").exists(), "the image done before is not redone"
    assert (folder / "img1.caption").is_file() and (folder / "img2.caption").is_file()
    assert not (folder / "img1.txt").exists(), "the job's own outputs, not the panel's"
    with Library() as library:
        assert library.job(job_id).state == "finished"
    window.batch_panel.summary.back_btn.click()
    qtbot.waitUntil(lambda: setup.resume_bar.isHidden() and window.tasks.pending == 0,
                    timeout=TIMEOUT_MS)


def test_chat_answers_land_in_the_library(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.library.db import Library

    image = make_image(tmp_path / "heron.png")
    window = open_window(qtbot, settings())
    add_images(qtbot, window, [image])
    window.chat.ask("Is there a heron?")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    window.chat.ask("Where is the heron standing?")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    with Library() as library:
        hits = library.search("heron")
    assert len(hits) == 1 and hits[0].kind == "chat", "one conversation, updated as it grows"
    assert hits[0].path == str(image.resolve())
    assert "standing" in hits[0].text


def test_a_library_from_a_newer_version_is_said_once_and_the_app_works(qtbot, tmp_path: Path) -> None:
    import sqlite3

    from smolvlm_desktop import paths

    paths.library_path().parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(paths.library_path()) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    window = open_window(qtbot, settings())
    qtbot.waitUntil(lambda: window.notice.isVisibleTo(window), timeout=TIMEOUT_MS)
    assert "library could not be opened" in window.notice.text()
    assert "newer version" in window.notice.toolTip()
    add_images(qtbot, window, [make_image(tmp_path / "a.png")])
    window.chat.ask("Describe this image.")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert window.chat.last_result is not None and not window.chat.errors
    shoot(window, "11-library-unavailable")
