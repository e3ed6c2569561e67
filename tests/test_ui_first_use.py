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


# --- B. Stop during Regenerate ---------------------------------------------------------------

def test_stop_during_regenerate_keeps_the_earlier_question_and_answer(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=small_settings(max_new_tokens=6))
    add_images(qtbot, window, [make_image(tmp_path / "red.png")])
    window.chat.ask("What is in the picture?")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    window.settings.max_new_tokens = 400  # the regenerated answer is long: Stop ends it
    key = tuple(window.gallery.selected_paths())
    before = [(t.role, t.text) for t in window.chat.histories[key]]
    window.chat_panel.prompt.setPlainText("my next question, half typed")
    gate = Gate()
    window.worker.token.connect(gate)  # holds the worker after the regenerated answer's first token
    window.chat_panel.regen_btn.click()
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    window.chat_panel.stop_btn.click()
    gate.open()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert window.chat.last_result.stop_reason == "cancelled"
    assert [(t.role, t.text) for t in window.chat.histories[key]] == before
    assert window.chat_panel.prompt.toPlainText() == "my next question, half typed"
    assert before[1][1].strip() in window.chat_panel.transcript.toPlainText()
    assert window.chat_panel.regen_btn.isEnabled()
    stored: list = []
    window.library_call(lambda library: library.chat_turns(window.chat.chat_ids[key]), stored.append)
    qtbot.waitUntil(lambda: bool(stored), timeout=TIMEOUT_MS)
    assert [(t["role"], t["text"]) for t in stored[0]] == before, "the library keeps them too"
    shoot_themes(window, "B-regenerate-stopped")


# --- C. Preferences that strand the window -----------------------------------------------------

def test_preferences_offer_only_what_the_model_and_this_computer_have(qtbot) -> None:
    from PySide6.QtCore import Qt

    window = open_window(qtbot)  # the demo model has fp32 and int8 graphs only
    dialog = window.preferences_dialog()
    qtbot.addWidget(dialog)
    items = dialog.variant.model()
    for missing in ("fp16", "q4", "uint8"):
        row = dialog.variant.findData(missing)
        assert not items.item(row).isEnabled(), missing
        assert "not in tiny-smolvlm" in dialog.variant.itemData(row, Qt.ItemDataRole.ToolTipRole)
    for present in (None, "int8", "fp32"):
        assert items.item(dialog.variant.findData(present)).isEnabled(), present
    dml = dialog.provider.findData("dml")  # no DirectML in this onnxruntime build
    assert not dialog.provider.model().item(dml).isEnabled()
    assert dialog.provider.itemText(dialog.provider.findData("auto")).startswith("Automatic")
    dialog.max_tokens.setValue(42)
    dialog.temperature.setValue(1.5)
    dialog.reset_btn.click()
    assert dialog.max_tokens.value() == Settings().max_new_tokens
    assert dialog.temperature.value() == Settings().temperature
    assert dialog.variant.currentData() is None and dialog.provider.currentData() == "auto"
    shoot_themes(dialog, "C-preferences", size=(560, 640))


def test_a_variant_the_model_lacks_never_strands_the_window(qtbot) -> None:
    from smolvlm_desktop import paths

    window = open_window(qtbot)
    window.settings.variant = "fp16"  # saved for another model, or from an older version
    window.model_state = "not yet"  # set again by the window when the load ends
    window.choose_model(str(paths.demo_model_dir()), demo=True)
    qtbot.waitUntil(lambda: window.model_state in ("ready", "error"), timeout=TIMEOUT_MS)
    assert window.model_state == "ready"
    assert window.pages.currentWidget() is window.workspace
    assert "fp16" in window.notice.text() and not window.notice.isHidden()
    assert window.settings.variant == "fp16", "the preference is kept for models that have it"


# --- D. a pasted image's chat ------------------------------------------------------------------

def paste_teal(qtbot, window) -> Path:
    from PySide6.QtGui import QColor, QGuiApplication, QImage

    image = QImage(80, 60, QImage.Format.Format_RGB32)
    image.fill(QColor("teal"))
    QGuiApplication.clipboard().setImage(image)
    before = set(window.gallery.paths())
    window.actions["paste"].trigger()
    qtbot.waitUntil(lambda: len(set(window.gallery.paths()) - before) == 1 and window.tasks.pending == 0,
                    timeout=TIMEOUT_MS)
    return Path((set(window.gallery.paths()) - before).pop())


def test_a_pasted_image_is_kept_in_the_data_folder_and_forgotten_with_its_chat(
        qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop import paths
    from ui_helpers import answer_next_dialog

    window = open_window(qtbot, settings=small_settings())
    add_images(qtbot, window, [make_image(tmp_path / "first.png")])
    pasted = paste_teal(qtbot, window)
    assert pasted.parent == paths.data_dir() / "pasted", "not a temporary folder deleted on exit"
    assert window.gallery.selected_paths() == [str(pasted)], "the pasted image is selected"
    assert pasted.is_file()
    window.chat.ask("What colour is this?")
    qtbot.waitUntil(lambda: not window.chat.busy and bool(window.chat.chat_ids), timeout=TIMEOUT_MS)
    shoot_themes(window, "D-pasted-image-chat")
    window.close()
    assert pasted.is_file(), "the library's chat still points at a file that exists"
    window = open_window(qtbot, settings=small_settings())
    add_images(qtbot, window, [pasted])
    window.gallery.select_paths([str(pasted)])
    answer_next_dialog("Forget")
    window.forget_selected()
    qtbot.waitUntil(lambda: not pasted.exists() and window.tasks.pending == 0, timeout=TIMEOUT_MS)
    assert window.gallery.item_for(str(pasted)) is None


# --- E. formats offered that cannot be read here -----------------------------------------------

def test_formats_that_cannot_be_decoded_here_are_not_offered_nor_reported_added(
        qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.engine.images import allowed_formats
    from ui_helpers import drag_and_drop

    assert "HEIF" not in allowed_formats() and "AVIF" in allowed_formats(), "this venv: no pillow-heif"
    window = open_window(qtbot)
    offered = window.image_filter()
    assert "*.heic" not in offered and "*.heif" not in offered
    assert "*.png" in offered and "*.avif" in offered and "*.jpg" in offered
    zone = window.gallery.drop_zone.body.text()
    assert "AVIF" in zone and "HEIC" not in zone, "the drop zone names what File ▸ Open accepts"
    heic = tmp_path / "iphone.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(200))
    said: list[str] = []
    window.status.messageChanged.connect(said.append)
    assert drag_and_drop(window, [heic])
    qtbot.waitUntil(lambda: bool(window.gallery.error_for(str(heic))) and window.tasks.pending == 0,
                    timeout=TIMEOUT_MS)
    assert "pillow-heif" in window.gallery.error_for(str(heic))
    assert not any(m.startswith("Added 1 image") for m in said), said
    assert any(m.startswith("Cannot read iphone.heic: not an image") and "pillow-heif" in m
               for m in said), said
    assert window.gallery.selected_paths() == []
    shoot_themes(window, "E-heic-not-readable")


# --- 1. an unreadable image silently left out --------------------------------------------------

def test_an_unreadable_selected_image_is_named_and_never_silently_left_out(qtbot, tmp_path: Path) -> None:
    from ui_helpers import answer_next_dialog

    window = open_window(qtbot, settings=small_settings())
    good = [make_image(tmp_path / f"good{i}.png") for i in range(2)]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    add_images(qtbot, window, good + [corrupt])
    assert window.gallery.error_for(str(corrupt))
    label = window.chat_panel.context_label
    window.gallery.select_paths([str(corrupt)])
    assert "corrupt.jpg cannot be read" in label.text() and "No image selected" not in label.text()
    seen: list[str] = []
    answer_next_dialog("Cancel", seen)
    window.chat_panel.prompt.setPlainText("What is this?")
    window.chat_panel.send_btn.click()
    assert seen and "corrupt.jpg" in seen[0], "asked before sending without it"
    assert not window.chat.busy and not window.chat.histories.get(())
    assert window.chat_panel.prompt.toPlainText() == "What is this?", "Cancel keeps the question"
    window.select_all()
    assert "2 of 3 images (1 unreadable" in label.text()
    shoot_themes(window, "1-unreadable-in-selection")
    answer_next_dialog("Ask without it", seen)
    window.chat_panel.preset_buttons["caption"].click()
    assert len(seen) == 2 and "corrupt.jpg" in seen[1]
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    history = window.chat.histories[tuple(map(str, good))]
    assert history[0].image_paths == tuple(map(str, good)) and history[1].role == "assistant"


# --- 2. rendering while streaming; answers that start with a space ------------------------------

def test_a_streaming_answer_has_its_own_heading_and_no_answer_starts_with_a_space(
        qtbot, tmp_path: Path) -> None:
    from PySide6.QtGui import QGuiApplication

    window = open_window(qtbot, settings=small_settings(max_new_tokens=6))
    gate = Gate()
    tokens: list[str] = []

    def hold_at_the_second_token(job_id: int, text: str) -> None:  # runs in the worker thread
        tokens.append(text)
        if len(tokens) == 2:
            gate()

    window.worker.token.connect(hold_at_the_second_token)
    window.chat.ask("hello")  # the demo model's answer to it starts with " busupu"
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: window.chat.live_text != "", timeout=TIMEOUT_MS)
    assert tokens[0].startswith(" "), "the model's first piece starts with a space"
    lines = window.chat_panel.transcript.toPlainText().splitlines()
    assert "SmolVLM" in lines, f"the heading is glued to the question: {lines}"
    streamed = lines[lines.index("SmolVLM") + 1]
    assert streamed and not streamed.startswith(" "), lines
    shoot_themes(window, "2-streaming")
    gate.open()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    answer = window.chat.histories[()][-1].text
    assert answer and answer == answer.strip()
    window.chat_panel.copy_btn.click()
    assert QGuiApplication.clipboard().text() == answer
    lines = window.chat_panel.transcript.toPlainText().splitlines()
    assert lines[lines.index("SmolVLM") + 1] == answer
    photos = tmp_path / "photos"
    make_image(photos / "a.png")
    window.show_batch()
    setup = window.batch_panel.setup
    setup.folder_edit.setText(str(photos))
    setup.try_btn.click()
    qtbot.waitUntil(lambda: window.batch.trial is None and setup.preview.toPlainText() != "",
                    timeout=TIMEOUT_MS)
    trial = setup.preview.toPlainText()
    assert trial == trial.strip(), repr(trial)


# --- 5. "No images found there." ---------------------------------------------------------------

def test_no_images_in_a_folder_says_where_and_goes_once_the_folder_changes(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=small_settings())
    only_below = tmp_path / "albums"
    make_image(only_below / "2024" / "a.png")
    window.show_batch()
    setup = window.batch_panel.setup
    setup.folder_edit.setText(str(only_below))
    setup.start_btn.click()
    qtbot.waitUntil(lambda: setup.preview.toPlainText() != "" and window.tasks.pending == 0,
                    timeout=TIMEOUT_MS)
    said = setup.preview.toPlainText()
    assert str(only_below) in said and "Include sub-folders" in said, said
    assert window.batch.job is None
    shoot_themes(window, "5-no-images-in-folder")
    setup.folder_edit.setText(str(only_below / "2024"))
    assert setup.preview.toPlainText() == "" and setup.preview.isHidden()


# --- 6. the finished and cancelled pages -------------------------------------------------------

def test_the_summary_lists_files_written_and_failures_once_and_retries_the_failed(
        qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=small_settings())
    photos = tmp_path / "photos"
    make_image(photos / "a.png")
    make_image(photos / "b.png")
    broken = photos / "broken1.png"
    broken.write_bytes(b"\x89PNG but not really")
    window.show_batch()
    setup, summary = window.batch_panel.setup, window.batch_panel.summary
    setup.folder_edit.setText(str(photos))
    setup.start_btn.click()
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is summary, timeout=TIMEOUT_MS)
    failure = summary.failures.item(0).text()
    assert failure.startswith("broken1.png: ") and failure.count("broken1.png") == 1, failure
    written = sorted(summary.written.item(i).text() for i in range(summary.written.count()))
    assert written == ["a.txt", "b.txt"]
    assert summary.open_btn.isEnabled() and window.batch.output_folder() == photos
    assert summary.retry_btn.isEnabled() and not summary.retry_btn.isHidden()
    shoot_themes(window, "6-summary-with-failure")
    make_image(broken)  # the user fixed the file
    summary.retry_btn.click()
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is summary and window.batch.job is None
                    and (photos / "broken1.txt").is_file(), timeout=TIMEOUT_MS)
    assert summary.title.text().startswith("Finished: 1 captioned, 0 skipped, 0 failed")
    assert summary.retry_btn.isHidden()


def test_a_cancelled_batch_page_starts_at_the_top(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=small_settings())
    photos = tmp_path / "photos"
    for name in ("a", "b", "c"):
        make_image(photos / f"{name}.png")
    window.show_batch()
    window.batch_panel.setup.folder_edit.setText(str(photos))
    gate = Gate()
    window.worker.image_started.connect(gate)
    window.batch_panel.setup.start_btn.click()
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    window.batch_panel.run.cancel_btn.click()
    gate.open()
    summary = window.batch_panel.summary
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is summary, timeout=TIMEOUT_MS)
    window.resize(1024, 700)
    qtbot.waitUntil(lambda: summary.title.isVisible(), timeout=TIMEOUT_MS)
    assert summary.title.text().startswith("Cancelled")
    assert summary.title.y() < 40, "the heading sits at the top, not mid-page"
    shoot_themes(window, "6-summary-cancelled")


# --- 8-10. what cannot be read -------------------------------------------------------------------

def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours."""
    def luminance(colour: str) -> float:
        channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("theme_name", ["light", "dark"])
def test_every_text_run_of_a_selected_library_result_is_readable(qtbot, tmp_path: Path,
                                                                 theme_name: str) -> None:
    import re

    from smolvlm_desktop.library.db import Library
    from smolvlm_desktop.ui import theme

    with Library() as library:
        library.record_caption(make_image(tmp_path / "pond" / "heron.png"),
                               "A grey heron stands in shallow water.", "SmolVLM-256M", "Describe.")
    window = open_window(qtbot, settings=small_settings(theme=theme_name))
    window.actions["library_search"].trigger()
    window.library_panel.search.setText("heron")
    window.library.search_now()
    qtbot.waitUntil(lambda: window.tasks.pending == 0 and window.library_panel.hits.count() == 1,
                    timeout=TIMEOUT_MS)
    hits = window.library_panel.hits
    hits.setCurrentRow(0)
    label = hits.itemWidget(hits.item(0))
    colours = theme.colours(theme_name)
    html = label.text()
    assert html.startswith("<div style=\"color:"), "no run falls back to the default dark text"
    for colour in re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", html):
        assert contrast(colour, colours["accent"]) >= 4.5, (colour, html)
    hits.clearSelection()
    assert colours["muted"] in hits.itemWidget(hits.item(0)).text(), "unselected: the usual colours"
    hits.setCurrentRow(0)
    shoot_themes(window, "8-library-selected")


def indicator_contrast(widget, background: str) -> float:
    """The strongest contrast of any pixel of a check box's or radio's indicator against the
    window colour: its border (unchecked) or its fill (checked) must stand out."""
    from PySide6.QtWidgets import QStyle, QStyleOptionButton

    option = QStyleOptionButton()
    option.initFrom(widget)
    element = (QStyle.SubElement.SE_CheckBoxIndicator if widget.inherits("QCheckBox")
               else QStyle.SubElement.SE_RadioButtonIndicator)
    rect = widget.style().subElementRect(element, option, widget)
    image = widget.grab().toImage()
    return max(contrast(image.pixelColor(x, y).name(), background)
               for x in range(rect.left(), rect.right() + 1)
               for y in range(rect.top(), rect.bottom() + 1))


@pytest.mark.parametrize("theme_name", ["light", "dark"])
def test_check_boxes_and_radios_stand_out_in_both_themes(qtbot, theme_name: str) -> None:
    from smolvlm_desktop.ui import theme

    window = open_window(qtbot, settings=small_settings(theme=theme_name))
    window.show_batch()
    setup = window.batch_panel.setup
    setup.recursive_check.setChecked(False)
    background = theme.colours(theme_name)["window"]
    for widget in (setup.recursive_check, setup.selection_radio, setup.folder_radio,
                   setup.format_checks["txt"]):
        assert indicator_contrast(widget, background) >= 3.0, (widget.text(), widget.isChecked())
    shoot_themes(window, "9-indicators")


def pixels_near(widget, colour: str, tolerance: int = 40) -> int:
    from PySide6.QtGui import QColor

    target = QColor(colour)
    image = widget.grab().toImage()
    return sum(1 for x in range(image.width()) for y in range(image.height())
               if max(abs(image.pixelColor(x, y).red() - target.red()),
                      abs(image.pixelColor(x, y).green() - target.green()),
                      abs(image.pixelColor(x, y).blue() - target.blue())) < tolerance)


@pytest.mark.parametrize("theme_name", ["light", "dark"])
def test_a_disabled_stop_does_not_look_like_a_live_one(qtbot, theme_name: str) -> None:
    from smolvlm_desktop.ui import theme

    window = open_window(qtbot, settings=small_settings(theme=theme_name))
    stop = window.chat_panel.stop_btn
    danger = theme.colours(theme_name)["danger"]
    assert not stop.isEnabled() and pixels_near(stop, danger) == 0, "greyed like any disabled button"
    window.chat_panel.set_busy(True)
    assert stop.isEnabled() and pixels_near(stop, danger) > 10, "red while it can stop something"
    window.chat_panel.set_busy(False)
    shoot_themes(window, "10-stop-disabled")


# --- 11. keyboard --------------------------------------------------------------------------------

def test_tab_leaves_the_question_box_and_focus_is_plain_to_see(qtbot) -> None:
    from PySide6.QtCore import Qt

    from smolvlm_desktop.ui import theme

    window = open_window(qtbot, settings=small_settings(theme="light"))
    window.activateWindow()
    prompt, panel = window.chat_panel.prompt, window.chat_panel
    prompt.setFocus()
    qtbot.waitUntil(prompt.hasFocus, timeout=TIMEOUT_MS)
    qtbot.keyClicks(prompt, "two words")
    qtbot.keyClick(prompt, Qt.Key.Key_Tab)
    assert "\t" not in prompt.toPlainText()
    assert QApplication_focus() is panel.send_btn, "Tab reaches Send"
    qtbot.keyClick(panel.send_btn, Qt.Key.Key_Tab)
    assert QApplication_focus() is panel.stop_btn or not panel.stop_btn.isEnabled()
    prompt.setFocus()
    qtbot.keyClick(prompt, Qt.Key.Key_Tab, Qt.KeyboardModifier.ControlModifier)
    assert prompt.toPlainText() == "two words\t", "Ctrl+Tab types a literal tab"
    accent = theme.colours("light")["accent"]
    clear = panel.clear_btn
    window.setFocus()
    unfocused = pixels_near(clear, accent)
    clear.setFocus()
    qtbot.waitUntil(clear.hasFocus, timeout=TIMEOUT_MS)
    assert pixels_near(clear, accent) > unfocused + 2 * (clear.width() + clear.height()), \
        "a 2-px accent outline all round"
    shoot_themes(window, "11-focus-on-clear")


def QApplication_focus():  # noqa: N802 - reads like the Qt call it wraps
    from PySide6.QtWidgets import QApplication

    return QApplication.focusWidget()


# --- 12. crash details ---------------------------------------------------------------------------

def test_crash_details_wrap_so_the_key_sentence_is_read_whole(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.ui.crash_dialog import error_dialog

    window = open_window(qtbot, model=None)
    key = ("RuntimeError: the vision encoder could not allocate 1.2 GB for 17 tiles at 2048 px; "
           "choose a lower detail in Preferences or close other programs and try again")
    dialog = error_dialog(f"Traceback (most recent call last):\n  File \"x.py\", line 1\n{key}\n",
                          tmp_path, window)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.toggle.setChecked(True)
    qtbot.waitUntil(dialog.details.isVisible, timeout=TIMEOUT_MS)
    assert dialog.details.horizontalScrollBar().maximum() == 0, "no line runs off the right edge"
    shoot_themes(dialog, "12-crash-details", size=(720, 480))


# --- 4. paused looks like running ----------------------------------------------------------------

def test_a_paused_batch_looks_paused_at_a_glance(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=small_settings())
    photos = tmp_path / "photos"
    for name in ("a", "b", "c"):
        make_image(photos / f"{name}.png")
    window.show_batch()
    window.batch_panel.setup.folder_edit.setText(str(photos))
    gate = Gate()
    window.worker.image_started.connect(gate)
    window.batch_panel.setup.start_btn.click()
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    run = window.batch_panel.run
    qtbot.waitUntil(lambda: run.current.text().startswith("Now:"), timeout=TIMEOUT_MS)
    run.stats.setText("0 captioned · 0 skipped · 0 failed · about 12 s left")  # as progress says it
    run.pause_btn.click()
    assert run.title.text() == "Paused after 0 of 3 images"
    assert not run.current.text().startswith("Now:") and "Resume" in run.current.text()
    assert "left" not in run.stats.text(), "no countdown while nothing counts down"
    assert "paused" in run.progress.format()
    assert run.pause_btn.objectName() == "Primary", "Resume is the main action now"
    shoot_themes(window, "4-batch-paused")
    run.pause_btn.click()
    assert run.title.text().startswith("Captioning 3 images")
    assert "paused" not in run.progress.format() and run.pause_btn.objectName() == ""
    gate.open()
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is window.batch_panel.summary,
                    timeout=TIMEOUT_MS)


# --- 3. the batch's main action and the gallery strip ---------------------------------------------

def test_the_gallery_strip_gives_way_when_the_batch_reads_a_folder(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=small_settings())
    window.resize(1024, 700)
    add_images(qtbot, window, [make_image(tmp_path / "a.png")])
    setup = window.batch_panel.setup
    window.show_batch()
    setup.folder_radio.setChecked(True)
    assert window.gallery.isHidden(), "a folder batch does not use the gallery"
    setup.selection_radio.setChecked(True)
    assert not window.gallery.isHidden(), "the gallery selection is the source: it shows"
    setup.folder_radio.setChecked(True)
    window.show_chat()
    assert not window.gallery.isHidden(), "the chat asks about the gallery's images"
    window.show_batch()
    start = setup.start_btn
    assert start.visibleRegion().boundingRect() == start.rect(), "Start batch is in view"
    shoot_themes(window, "3-batch-folder-no-strip")


# --- rough edges ---------------------------------------------------------------------------------

def test_loading_is_said_once_in_the_status_bar(qtbot) -> None:
    from smolvlm_desktop.ui.status_bar import StatusBar
    from smolvlm_desktop.worker import LOADING

    bar = StatusBar()
    qtbot.addWidget(bar)
    bar.set_model_state(LOADING, None, "Loading SmolVLM-256M-Instruct (int8)…")
    assert "Loading" in bar.model_label.text()
    assert "Loading" not in bar.currentMessage(), "said on the right already"
    window = open_window(qtbot, model=None)
    window._model_from_manager(str(TINY_MODEL), True)
    assert "Loading" not in window.status.currentMessage()


TINY_MODEL = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-smolvlm"


def test_presets_speak_of_these_images_when_several_are_attached(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.presets import preset_prompt

    window = open_window(qtbot, settings=small_settings())
    paths = [make_image(tmp_path / f"p{i}.png") for i in range(2)]
    add_images(qtbot, window, paths)
    window.select_all()
    window.chat_panel.preset_buttons["caption"].click()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    question = window.chat.histories[tuple(map(str, paths))][0].text
    assert question == "Write a short, one-sentence caption for these 2 images."
    assert "these 2 images" in window.chat_panel.preset_buttons["tags"].toolTip()
    shoot_themes(window, "19-preset-two-images")
    assert preset_prompt("caption") == "Write a short, one-sentence caption for this image."


def test_gallery_labels_line_up_whatever_the_image_size(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.ui.gallery import ICON

    window = open_window(qtbot, settings=small_settings(theme="light"))
    small = make_image(tmp_path / "a_long_holiday_name_0001_small.png", size=(30, 20))
    large = make_image(tmp_path / "a_long_holiday_name_0001_large.png", size=(400, 300))
    add_images(qtbot, window, [small, large])
    items = [window.gallery.item_for(str(p)) for p in (small, large)]
    for item in items:
        assert item.icon().actualSize(ICON) == ICON, "every thumbnail fills the same square"
    window.gallery.list.setCurrentItem(items[1])  # clicked: selected and current
    window.gallery.list.setFocus()
    shoot_themes(window, "15-gallery-labels")


def test_menus_put_preferences_and_theme_where_people_look_and_ctrl_3_opens_the_library(qtbot) -> None:
    from PySide6.QtGui import QAction, QKeySequence

    window = open_window(qtbot)
    menus = {a.text(): a.menu() for a in window.menuBar().actions()}
    assert window.actions["preferences"] in menus["&Edit"].actions()
    assert window.actions["preferences"].menuRole() == QAction.MenuRole.PreferencesRole
    themes = next(a.menu() for a in menus["&View"].actions() if a.menu() is not None)
    assert window.actions["theme_dark"] in themes.actions()
    assert window.actions["show_library"].shortcut() == QKeySequence("Ctrl+3")
    window.actions["show_library"].trigger()
    assert window.tabs.currentWidget() is window.library_panel


def test_forget_everything_is_styled_as_destructive(qtbot) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    from smolvlm_desktop.ui import theme

    window = open_window(qtbot, settings=small_settings(theme="light"))
    qtbot.waitUntil(lambda: window.worker.library is not None, timeout=TIMEOUT_MS)
    seen: list[str] = []

    def look_and_cancel() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, look_and_cancel)
            return
        seen.extend(pixels_near(b, danger) > 10 for b in box.buttons() if b.text() == "Forget everything")
        box.button(QMessageBox.StandardButton.Cancel).click()

    danger = theme.colours(window.settings.theme)["danger"]
    QTimer.singleShot(0, look_and_cancel)
    window.forget_everything()
    assert seen == [True], "the button's text is red"


def test_the_resume_offer_quotes_the_folder_says_local_time_and_the_form_follows_it(
        qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from types import SimpleNamespace

    from smolvlm_desktop.ui.batch_controller import describe_job
    from test_ui_library import unfinished_job

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        job = SimpleNamespace(created_at="2026-12-04T15:05:00.000+00:00", state="running",
                              settings={"aggregate_dir": "/data/holiday photos"},
                              counts={"done": 20, "total": 30})
        said = describe_job(job)
        assert "“holiday photos”" in said and "2026-12-05 00:05" in said and "UTC" not in said, said
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    folder = tmp_path / "shoot"
    unfinished_job(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    window = open_window(qtbot, settings=small_settings(last_folder=str(elsewhere)))
    setup = window.batch_panel.setup
    qtbot.waitUntil(lambda: not setup.resume_bar.isHidden(), timeout=TIMEOUT_MS)
    assert setup.folder_edit.text() == str(folder), "the form shows the unfinished job's folder"
    window.show_batch()
    shoot_themes(window, "17-resume-offer")


def test_the_model_manager_shows_sizes_names_the_2b_clears_old_errors_and_use_now_closes(qtbot) -> None:
    window = open_window(qtbot, settings=small_settings(variant=None), model=None)
    window.manage_models()
    dialog = window.model_manager
    qtbot.waitUntil(lambda: dialog.isVisible() and dialog.table.rowCount() > 0 and
                    window.tasks.pending == 0, timeout=TIMEOUT_MS)
    rows = {r.name: i for i, r in enumerate(dialog.rows)}
    cell = lambda name, column: dialog.table.item(rows[name], column).text()  # noqa: E731
    assert cell("SmolVLM-Instruct", 0) == "SmolVLM-Instruct (2.2B)"
    assert "MB" in cell("SmolVLM-256M-Instruct", 2) and "download" in cell("SmolVLM-256M-Instruct", 2)
    assert "KB" in cell("demo", 2) or "MB" in cell("demo", 2), "the bundled model's size on disk"
    assert cell("SmolVLM-500M-Instruct", 2), "unknown sizes are said, not left blank"
    dialog.table.selectRow(rows["SmolVLM-256M-Instruct"])
    dialog.show_error("Download failed: the network is off")
    dialog.table.selectRow(rows["demo"])
    assert dialog.error.isHidden(), "an old error does not stay on another row"
    shoot_themes(dialog, "13-model-manager", size=(760, 500))
    chosen: list[str] = []
    dialog.chosen.connect(lambda folder, demo: chosen.append(folder))
    dialog.use_btn.click()
    assert chosen and not dialog.isVisible(), "Use now closes the dialog"


def test_each_detail_level_says_what_it_costs_and_buys(qtbot) -> None:
    from smolvlm_desktop.ui.settings_dialog import SettingsDialog

    window = open_window(qtbot)
    combo = window.batch_panel.setup.detail_combo
    labels = {combo.itemData(i): combo.itemText(i) for i in range(combo.count())}
    assert "1 tile" in labels[512] and "17 tiles" in labels[2048]
    assert "fastest" in labels[512] and "slowest" in labels[2048]
    edge = window.model_info.longest_edge
    assert f"{edge} px" in labels[None] and "recommended" not in labels[None]
    assert combo.toolTip() and "small" in combo.toolTip().lower()
    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    assert [dialog.detail.itemText(i) for i in range(1, dialog.detail.count())] == \
        [labels[v] for v in (512, 1024, 1536, 2048)], "one wording in both places"
    window.show_batch()
    shoot_themes(window, "21-detail-levels")


def test_regenerate_samples_another_answer_and_keeps_the_earlier_ones(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, settings=small_settings(max_new_tokens=6))
    assert window.settings.temperature == 0, "greedy by default: the same answer every time"
    add_images(qtbot, window, [make_image(tmp_path / "a.png")])
    window.chat.ask("What is in the picture?")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    key = tuple(window.gallery.selected_paths())
    first = window.chat.histories[key][-1].text
    panel = window.chat_panel
    assert panel.prev_btn.isHidden() and panel.next_btn.isHidden()
    panel.regen_btn.click()
    assert window.chat.job.settings.temperature > 0 and window.chat.job.settings.seed is None
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    second = window.chat.histories[key][-1].text
    assert "answer 2 of 2" in panel.transcript.toPlainText()
    assert not panel.prev_btn.isHidden() and panel.prev_btn.isEnabled() and not panel.next_btn.isEnabled()
    shoot_themes(window, "20-two-answers")
    panel.prev_btn.click()
    assert window.chat.histories[key][-1].text == first, "the earlier answer is back, for follow-ups too"
    assert "answer 1 of 2" in panel.transcript.toPlainText()
    panel.next_btn.click()
    assert window.chat.histories[key][-1].text == second
    window.chat.ask("And then?")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert panel.prev_btn.isHidden(), "a new question starts with one answer"


def test_library_results_show_a_thumbnail_of_their_image(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.library.db import Library

    with Library() as library:
        library.record_caption(make_image(tmp_path / "pond" / "heron.png", (90, 140, 90)),
                               "A grey heron stands in shallow water.", "SmolVLM-256M", "Describe.")
        library.record_caption(tmp_path / "gone.png", "A heron that was deleted since.",
                               "SmolVLM-256M", "Describe.")
    window = open_window(qtbot, settings=small_settings())
    window.library_search()
    window.library_panel.search.setText("heron")
    window.library.search_now()
    hits = window.library_panel.hits
    qtbot.waitUntil(lambda: window.tasks.pending == 0 and hits.count() == 2, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: window.tasks.pending == 0, timeout=TIMEOUT_MS)
    shown = {Path(hits.item(i).data(0x0100).path).name: hits.item(i) for i in range(2)}
    assert not shown["heron.png"].icon().isNull(), "a thumbnail of the heron"
    label = hits.itemWidget(shown["heron.png"])
    text_left = label.x() + label.contentsMargins().left()
    icon_right = hits.visualItemRect(shown["heron.png"]).left() + hits.iconSize().width()
    assert text_left >= icon_right, "the text leaves the thumbnail room"
    assert not shown["gone.png"].icon().isNull(), "a missing image gets the broken-image icon"
    shoot_themes(window, "16-library-thumbnails")


def test_at_wide_sizes_the_selected_image_shows_with_the_tiles_the_model_reads(qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.ui.preview import tile_grid

    window = open_window(qtbot, settings=small_settings())
    info = window.model_info  # the demo model: 256 px, tiles of 64 px
    photo = make_image(tmp_path / "wide.png", size=(800, 600))
    add_images(qtbot, window, [photo])
    window.gallery.select_paths([str(photo)])
    preview = window.chat_panel.preview
    window.resize(1600, 1000)
    qtbot.waitUntil(lambda: preview.has_image and window.tasks.pending == 0, timeout=TIMEOUT_MS)
    qtbot.waitUntil(preview.isVisible, timeout=TIMEOUT_MS)
    assert preview.canvas.grid == tile_grid(800, 600, info.tile_size, info.longest_edge) == (3, 4)
    assert "12 tiles of 64 px" in preview.caption.text()
    shoot_themes(window, "beyond-wide-preview", size=(1600, 1000))
    window.resize(1024, 700)
    qtbot.waitUntil(lambda: not preview.isVisible(), timeout=TIMEOUT_MS)


@pytest.mark.parametrize("theme_name", ["light", "dark"])
def test_text_fields_get_a_two_pixel_focus_outline(qtbot, theme_name: str) -> None:
    from smolvlm_desktop.ui import theme

    window = open_window(qtbot, settings=small_settings(theme=theme_name))
    window.activateWindow()
    accent = theme.colours(theme_name)["accent"]
    for field in (window.chat_panel.prompt, window.library_panel.search):
        window.tabs.setCurrentWidget(field.parentWidget() if field is window.library_panel.search
                                     else window.chat_panel)
        window.setFocus()
        before = pixels_near(field, accent, tolerance=24)
        field.setFocus()
        qtbot.waitUntil(field.hasFocus, timeout=TIMEOUT_MS)
        after = pixels_near(field, accent, tolerance=24)
        assert after - before >= 2 * (field.width() + field.height()), (field.accessibleName(), before, after)


def test_a_folder_dropped_on_a_folder_batch_becomes_its_folder(qtbot, tmp_path: Path) -> None:
    from ui_helpers import drag_and_drop

    window = open_window(qtbot, settings=small_settings())
    photos = tmp_path / "photos"
    make_image(photos / "a.png")
    window.show_batch()
    setup = window.batch_panel.setup
    assert window.gallery.isHidden()
    assert drag_and_drop(window, [photos])
    assert setup.folder_edit.text() == str(photos) and setup.start_btn.isEnabled()
    assert window.tabs.currentWidget() is window.batch_panel and window.gallery.paths(False) == []
    loose = make_image(tmp_path / "loose.png")
    assert drag_and_drop(window, [loose])  # a file is not a folder to caption: the gallery takes it
    qtbot.waitUntil(lambda: window.gallery.paths() == [str(loose)] and window.tasks.pending == 0,
                    timeout=TIMEOUT_MS)
    assert window.tabs.currentWidget() is window.chat_panel, "shown where it went"


def test_preferences_say_when_a_saved_choice_cannot_work_here(qtbot) -> None:
    from smolvlm_desktop import paths
    from smolvlm_desktop.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(small_settings(variant="fp16", provider="dml"),
                            model_folder=paths.demo_model_dir())
    qtbot.addWidget(dialog)
    assert dialog.variant.currentData() is None and dialog.provider.currentData() == "auto"
    note = dialog.note.text()
    assert "fp16" in note and "DirectML" in note and "Automatic" in note, note


def test_tab_leaves_the_batch_prompt_too(qtbot) -> None:
    from PySide6.QtCore import Qt

    window = open_window(qtbot, settings=small_settings())
    window.activateWindow()
    window.show_batch()
    setup = window.batch_panel.setup
    setup.preset_combo.setCurrentIndex(setup.preset_combo.findData("custom"))
    setup.prompt_edit.setFocus()
    qtbot.waitUntil(setup.prompt_edit.hasFocus, timeout=TIMEOUT_MS)
    qtbot.keyClicks(setup.prompt_edit, "Name the bird")
    qtbot.keyClick(setup.prompt_edit, Qt.Key.Key_Tab)
    assert "\t" not in setup.prompt_edit.toPlainText() and not setup.prompt_edit.hasFocus()
