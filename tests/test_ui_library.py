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


def seed_library(tmp_path: Path) -> tuple[Path, Path]:
    from smolvlm_desktop.library.db import Library

    heron = make_image(tmp_path / "pond" / "heron.png", (90, 140, 90))
    fox = make_image(tmp_path / "woods" / "fox.png", (200, 110, 30))
    with Library() as library:
        library.record_caption(heron, "A grey heron stands in shallow water <b>not bold</b>.",
                               "SmolVLM-256M", "Describe.")
        library.record_caption(fox, "A red fox crosses a snowy field.", "SmolVLM-256M", "Describe.")
        library.record_chat([fox], [("user", "Is the fox asleep?"), ("assistant", "No, it runs.")],
                            "SmolVLM-256M")
    return heron, fox


def search(qtbot, window, text: str) -> None:
    window.actions["library_search"].trigger()
    window.library_panel.search.setText(text)
    window.library.search_now()  # what the typing pause would do, without waiting for it
    qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT_MS)


def test_search_finds_captions_and_chats_and_a_click_shows_the_image(qtbot, tmp_path: Path) -> None:
    heron, fox = seed_library(tmp_path)
    window = open_window(qtbot, settings())
    panel = window.library_panel
    window.actions["library_search"].trigger()
    assert window.tabs.currentWidget() is panel and panel.search.hasFocus()
    assert "Search what the app has learned" in panel.message_title.text()
    shoot(window, "12-library-empty")
    search(qtbot, window, "fox")
    assert panel.hits.count() == 2, "the caption and the chat"
    assert {h.kind for h in window.library.last_hits} == {"caption", "chat"}
    shoot(window, "12b-library-hits")
    search(qtbot, window, "hero")  # as you type: the last word is a prefix
    assert panel.hits.count() == 1
    label = panel.hits.itemWidget(panel.hits.item(0))
    assert "&lt;b&gt;not bold" in label.text(), "caption text is escaped, never markup"
    panel.hits.itemClicked.emit(panel.hits.item(0))
    qtbot.waitUntil(lambda: window.gallery.selected_paths() == [str(heron.resolve())],
                    timeout=TIMEOUT_MS)
    search(qtbot, window, "zebra")
    assert "Nothing found for “zebra”" in panel.message_title.text()
    shoot(window, "12c-library-no-results")
    window.settings.theme = "dark"
    try:
        window.apply_theme()
        search(qtbot, window, "fox")
        shoot(window, "12d-library-hits-dark")
    finally:
        window.settings.theme = "light"
        window.apply_theme()


def test_forget_selected_and_forget_everything_ask_first(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.library.db import Library
    from ui_helpers import answer_next_dialog

    heron, fox = seed_library(tmp_path)
    window = open_window(qtbot, settings())
    add_images(qtbot, window, [fox])
    window.gallery.select_paths([str(fox)])
    seen: list[str] = []
    answer_next_dialog("Cancel", seen)
    window.actions["forget_selected"].trigger()
    assert seen and "Forget this image?" in seen[0]
    with Library() as library:
        assert library.search("fox")
    answer_next_dialog("Forget")
    window.actions["forget_selected"].trigger()
    qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT_MS)
    assert "Forgotten: 1 caption, 1 chat" in window.status.currentMessage()
    with Library() as library:
        assert library.search("fox") == [] and library.search("heron")
    answer_next_dialog("Forget everything")
    window.actions["forget_everything"].trigger()
    qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT_MS)
    with Library() as library:
        assert library.search("heron") == []


def highlighted_runs(label_html: str) -> tuple[str, list[str]]:
    """What a person sees in a hit's label: its plain text and the runs drawn highlighted
    (bold), read back from the rich text as Qt lays it out."""
    from PySide6.QtGui import QFont, QTextDocument

    document = QTextDocument()
    document.setHtml(label_html)
    runs, block = [], document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.charFormat().fontWeight() >= QFont.Weight.DemiBold:
                runs.append(fragment.text())
            it += 1
        block = block.next()
    return document.toPlainText(), runs


@pytest.mark.parametrize("query, match", [("door", "door"), ("exit", "EXIT")])
def test_a_caption_with_brackets_shows_them_and_highlights_only_the_match(
        qtbot, tmp_path: Path, query: str, match: str) -> None:
    from smolvlm_desktop.library.db import Library
    from smolvlm_desktop.ui import theme
    from smolvlm_desktop.ui.library_panel import LibraryPanel

    with Library(tmp_path / "library.sqlite3") as library:
        library.record_caption(tmp_path / "sign.png", "a sign reading [EXIT] <i>above</i> a door",
                               "SmolVLM-256M", "Describe.")
        hits = library.search(query)
    panel = LibraryPanel()
    qtbot.addWidget(panel)
    panel.show_hits(hits, theme.colours("light"))
    label = panel.hits.itemWidget(panel.hits.item(0))
    assert "&lt;i&gt;above" in label.text(), "still escaped, never markup"
    text, runs = highlighted_runs(label.text().split('<div style="margin-top:2px">')[1])
    assert text.splitlines()[0] == "a sign reading [EXIT] <i>above</i> a door"
    assert runs == [match]
