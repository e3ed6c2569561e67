"""Search by meaning in the window, on the real worker, a real library file and the bundled
tiny CLIP (SMOLVLM_EMBEDDING_MODEL=demo): index a folder, search, More like this, and
indexing that waits while a chat runs. Screenshots in both themes go to test-artifacts/."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from smolvlm_desktop.settings import Settings  # noqa: E402
from ui_helpers import TIMEOUT_MS, Gate, add_images, make_image, open_window, shoot  # noqa: E402

pytestmark = pytest.mark.gui

COLOURS = [(200, 80, 40), (40, 120, 200), (60, 170, 90), (230, 200, 50), (120, 60, 160)]


@pytest.fixture(autouse=True)
def demo_embedding_model(monkeypatch):
    monkeypatch.setenv("SMOLVLM_EMBEDDING_MODEL", "demo")


def settings() -> Settings:
    return Settings(max_new_tokens=4, variant="fp32", provider="cpu", threads=1, idle_unload_minutes=0)


def folder_of_images(folder: Path) -> list[Path]:
    images = [make_image(folder / f"photo{i}.png", colour) for i, colour in enumerate(COLOURS)]
    Image.open(images[1]).resize((320, 240)).save(folder / "photo1-large.png")
    return images


def index(qtbot, window, folder: Path) -> None:
    messages: list[str] = []
    window.library.status.connect(messages.append)
    window.library.index_folder(str(folder))
    qtbot.waitUntil(lambda: window.library.indexing is None, timeout=TIMEOUT_MS)
    assert any(m.startswith("Indexed 6 images") for m in messages), messages


def test_a_folder_indexed_from_the_library_page_is_searchable_by_meaning(qtbot, tmp_path):
    from smolvlm_desktop.library.db import Library

    images = folder_of_images(tmp_path / "photos")
    with Library() as library:
        library.record_caption(images[3], "a yellow card on a table", model="m", prompt="p")
    window = open_window(qtbot, settings())
    panel = window.library_panel
    assert not panel.index_btn.isHidden() and "what they show" in panel.search.placeholderText()
    index(qtbot, window, tmp_path / "photos")
    window.library_search()
    panel.search.setText("yellow card")
    window.library.search_now()
    qtbot.waitUntil(lambda: panel.hits.count() == 6, timeout=TIMEOUT_MS)
    first = panel.hits.item(0).data(0x0100)
    assert Path(first.path) == images[3].resolve() and first.by_words and first.by_meaning
    assert "“yellow card”: 6 images" in panel.count.text()
    first_text = panel.hits.itemWidget(panel.hits.item(0)).findChild(type(panel.count), "MatchText").text()
    assert "font-weight:600\">yellow</span>" in first_text  # the caption's matching words marked
    for theme in ("light", "dark"):
        window.set_theme(theme)
        shoot(window, f"20-library-meaning-{theme}")

    chosen: list[list[str]] = []
    window.library.show_paths.connect(chosen.append)
    panel.hits.itemClicked.emit(panel.hits.item(0))
    assert chosen == [[str(images[3].resolve())]]

    more = panel.hits.itemWidget(panel.hits.item(1)).findChildren(type(panel.index_btn))[0]
    target = panel.hits.item(1).data(0x0100).path
    more.click()
    qtbot.waitUntil(lambda: panel.count.text().startswith(f"More like {Path(target).name}"),
                    timeout=TIMEOUT_MS)
    paths = [panel.hits.item(i).data(0x0100).path for i in range(panel.hits.count())]
    assert target not in paths and len(paths) == 5
    if Path(target).name == "photo1.png":  # its double comes first
        assert Path(paths[0]).name == "photo1-large.png"
    for theme in ("light", "dark"):
        window.set_theme(theme)
        shoot(window, f"21-library-more-like-this-{theme}")


def test_more_like_the_selected_image_puts_its_larger_copy_first(qtbot, tmp_path):
    images = folder_of_images(tmp_path / "photos")
    window = open_window(qtbot, settings())
    index(qtbot, window, tmp_path / "photos")
    add_images(qtbot, window, [images[1]])
    window.gallery.select_paths([str(images[1])])
    window.actions["more_like_selected"].trigger()  # Library ▸ More like the selected image
    panel = window.library_panel
    assert window.tabs.currentWidget() is panel
    qtbot.waitUntil(lambda: panel.count.text().startswith("More like photo1.png"), timeout=TIMEOUT_MS)
    assert Path(panel.hits.item(0).data(0x0100).path).name == "photo1-large.png"


def test_indexing_waits_while_a_chat_is_answered(qtbot, tmp_path):
    from smolvlm_desktop.library.db import Library
    from smolvlm_desktop.library.vectors import VectorStore

    folder_of_images(tmp_path / "photos")
    window = open_window(qtbot, settings())
    add_images(qtbot, window, [make_image(tmp_path / "chat.png")])

    def embedded() -> int:
        with Library() as library:
            return VectorStore(library).count("tiny-clip/16")[0]

    qtbot.waitUntil(lambda: window.library.indexing is None and embedded() == 1, timeout=TIMEOUT_MS)
    gate = Gate()
    window.worker.job_started.connect(gate)  # holds the worker thread: a chat is running
    window.chat.ask("What is this?")
    assert gate.reached.wait(TIMEOUT_MS / 1000)
    seen: list[int] = []
    window.library.index_progress.connect(lambda p: seen.append(p.done))
    window.library.index_folder(str(tmp_path / "photos"))
    qtbot.waitUntil(lambda: seen == [0], timeout=TIMEOUT_MS)
    qtbot.wait(300)
    assert embedded() == 1, "nothing embedded while the chat runs"
    window.worker.job_started.disconnect(gate)
    gate.open()
    qtbot.waitUntil(lambda: window.library.indexing is None and not window.chat.busy, timeout=TIMEOUT_MS)
    assert embedded() == 7


def test_images_opened_in_the_window_are_indexed_in_the_background(qtbot, tmp_path):
    from smolvlm_desktop.library.db import Library
    from smolvlm_desktop.library.vectors import VectorStore

    images = folder_of_images(tmp_path / "photos")
    window = open_window(qtbot, settings())
    add_images(qtbot, window, images[:3])

    def embedded() -> int:
        with Library() as library:
            return VectorStore(library).count("tiny-clip/16")[0]

    qtbot.waitUntil(lambda: embedded() == 3 and window.library.indexing is None, timeout=TIMEOUT_MS)
    window.library.index_folder(str(tmp_path / "photos"))  # the rest; the three are unchanged
    qtbot.waitUntil(lambda: window.library.indexing is None and embedded() == 6, timeout=TIMEOUT_MS)


def test_images_captioned_by_a_folder_batch_are_indexed_after_it(qtbot, tmp_path):
    """A folder batch's images never enter the gallery; once the batch ends they are embedded
    in the background like opened ones (nothing while the batch runs)."""
    from smolvlm_desktop.library.db import Library
    from smolvlm_desktop.library.vectors import VectorStore

    folder_of_images(tmp_path / "photos")
    window = open_window(qtbot, settings())

    def embedded() -> int:
        with Library() as library:
            return VectorStore(library).count("tiny-clip/16")[0]

    counts: list[int] = []
    window.worker.image_done.connect(lambda *_: counts.append(embedded()))  # worker thread
    setup = window.batch_panel.setup
    window.show_batch()
    setup.folder_edit.setText(str(tmp_path / "photos"))
    setup.start_btn.click()
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is window.batch_panel.summary,
                    timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: embedded() == 6 and window.library.indexing is None, timeout=TIMEOUT_MS)
    assert counts == [0] * 6, "nothing is embedded while the batch captions"
    assert window.gallery.paths() == []  # they were never opened: the batch brought them in


def test_a_selected_result_stays_selected_and_readable_across_a_theme_change(qtbot, tmp_path):
    """A selected row sits on the accent colour: its text takes the highlighted-text colour
    (dark text vanished on it), and a theme change keeps the selection (it was lost)."""
    from smolvlm_desktop.ui import theme

    folder_of_images(tmp_path / "photos")
    window = open_window(qtbot, settings())
    index(qtbot, window, tmp_path / "photos")
    panel = window.library_panel
    window.library_search()
    panel.search.setText("anything")
    window.library.search_now()
    qtbot.waitUntil(lambda: panel.hits.count() == 6, timeout=TIMEOUT_MS)
    panel.hits.setCurrentRow(2)
    for name in ("dark", "light"):
        window.set_theme(name)
        assert panel.hits.currentRow() == 2 and panel.hits.item(2).isSelected()
        texts = [panel.hits.itemWidget(panel.hits.item(i)).findChild(type(panel.count), "MatchText").text()
                 for i in (1, 2)]
        on_accent = theme.colours(name)["highlight_text"]
        assert f"color:{on_accent}" in texts[1] and f"color:{on_accent}" not in texts[0]
