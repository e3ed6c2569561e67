"""The chat panel on the real worker thread and the tiny model: streaming, Stop, history."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402

from smolvlm_desktop.presets import preset_prompt  # noqa: E402
from smolvlm_desktop.settings import Settings  # noqa: E402
from ui_helpers import TIMEOUT_MS, Gate, add_images, make_image, open_window, shoot  # noqa: E402

pytestmark = pytest.mark.gui


def settings(max_new_tokens: int = 8) -> Settings:
    return Settings(max_new_tokens=max_new_tokens, variant="fp32", provider="cpu", threads=1,
                    idle_unload_minutes=0)


@pytest.fixture
def window(qtbot, tmp_path: Path):
    w = open_window(qtbot, settings=settings(400))
    add_images(qtbot, w, [make_image(tmp_path / "red.png"), make_image(tmp_path / "blue.png", (40, 90, 220))])
    w.gallery.select_paths([str(tmp_path / "red.png")])
    return w


def test_typed_question_streams_in_and_reports_speed(qtbot, window) -> None:
    window.settings.max_new_tokens = 8
    tokens: list[str] = []
    window.worker.token.connect(lambda job_id, text: tokens.append(text))
    qtbot.keyClicks(window.chat_panel.prompt, "What colour is the square?")
    qtbot.keyClick(window.chat_panel.prompt, Qt.Key.Key_Return)
    assert window.chat.busy and not window.chat_panel.send_btn.isEnabled()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    history = window.chat.histories[(window.gallery.selected_paths()[0],)]
    assert [t.role for t in history] == ["user", "assistant"]
    assert history[0].text == "What colour is the square?" and len(history[0].image_paths) == 1
    assert history[1].text == "".join(tokens)
    transcript = window.chat_panel.transcript.toPlainText()
    assert "What colour is the square?" in transcript and history[1].text.strip() in transcript
    assert "tokens/s" in window.status.speed_label.text()
    assert window.chat_panel.prompt.toPlainText() == ""
    shoot(window, "04-chat-answered")


def test_stop_cancels_mid_answer_and_keeps_the_partial_text(qtbot, window) -> None:
    gate = Gate()
    window.worker.token.connect(gate)  # holds the worker thread after its first token
    window.chat_panel.preset_buttons["detailed"].click()
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: window.chat.live_text != "", timeout=TIMEOUT_MS)
    assert window.chat_panel.stop_btn.isEnabled()
    window.chat_panel.stop_btn.click()
    gate.open()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert window.chat.last_result.stop_reason == "cancelled"
    assert len(window.chat.last_result.token_ids) < 400
    history = window.chat.histories[tuple(window.gallery.selected_paths())]
    assert history[0].text == preset_prompt("detailed")
    assert history[-1].role == "assistant" and history[-1].text == window.chat.last_result.text
    assert window.chat_panel.send_btn.isEnabled()


def test_regenerate_copy_and_clear(qtbot, window) -> None:
    window.settings.max_new_tokens = 5
    window.chat_panel.preset_buttons["caption"].click()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    key = tuple(window.gallery.selected_paths())
    window.chat_panel.regen_btn.click()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert [t.role for t in window.chat.histories[key]] == ["user", "assistant"]
    shown = window.chat.histories[key][-1].text  # sampled: another answer (issue 15, item 20)
    window.chat_panel.copy_btn.click()
    assert QGuiApplication.clipboard().text() == shown
    window.chat_panel.clear_btn.click()
    assert key not in window.chat.histories
    assert "Ask anything" in window.chat_panel.transcript.toPlainText()


def test_each_image_set_keeps_its_own_conversation(qtbot, window, tmp_path: Path) -> None:
    window.settings.max_new_tokens = 4
    red, blue = str(tmp_path / "red.png"), str(tmp_path / "blue.png")
    window.chat.ask("First question about red")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    window.chat.ask("A follow-up about red")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    red_turns = window.chat.histories[(red,)]
    assert [t.role for t in red_turns] == ["user", "assistant"] * 2
    assert red_turns[2].image_paths == ()  # the image is sent once, on the first turn
    window.gallery.select_paths([red, blue])
    assert "2 images" in window.chat_panel.context_label.text()
    assert "First question" not in window.chat_panel.transcript.toPlainText()
    window.gallery.select_paths([red])
    assert "A follow-up about red" in window.chat_panel.transcript.toPlainText()


def test_a_question_whose_image_vanished_shows_the_reason(qtbot, window, tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    red.write_bytes(b"no longer a png")
    window.chat.ask("What is this?")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert "red.png" in window.chat.errors[(str(red),)]
    assert "Could not answer" in window.chat_panel.transcript.toPlainText()
    assert window.chat.histories[(str(red),)] == []  # the unanswered question left the history
    assert window.chat_panel.prompt.toPlainText() == "What is this?"  # ...and went back to the box
    shoot(window, "06b-chat-error")


def test_switching_images_while_streaming_keeps_the_answer_with_its_images(qtbot, window,
                                                                          tmp_path: Path) -> None:
    gate = Gate()
    window.worker.token.connect(gate)
    red, blue = str(tmp_path / "red.png"), str(tmp_path / "blue.png")
    window.settings.max_new_tokens = 6
    window.chat.ask("About red")
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    window.gallery.select_paths([blue])
    threading.Timer(0.01, gate.open).start()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert [t.role for t in window.chat.histories[(red,)]] == ["user", "assistant"]
    assert (blue,) not in window.chat.histories
    assert "About red" not in window.chat_panel.transcript.toPlainText()


class HoldReadingAt(Gate):
    """Holds the worker thread at the reading report (read, total) given, for as long as the
    job reporting is not cancelled (choosing the image cancels the read-ahead of the drop's
    own selection, which must then go on and end)."""

    def __init__(self, worker, read: int) -> None:
        super().__init__()
        self.worker, self.read = worker, read

    def __call__(self, job_id: int, read: int, total: int) -> None:  # type: ignore[override]
        job = self.worker._active.get(job_id)
        if read != self.read or job is None or self.opened.is_set():
            return
        self.reached.set()
        while not self.opened.wait(0.01) and not job.cancel.cancelled:
            pass


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_new_images_are_read_ahead_with_progress_then_a_follow_up_reads_only_itself(
        qtbot, tmp_path: Path, theme: str) -> None:
    window = open_window(qtbot, settings=settings(6))
    window.actions[f"theme_{theme}"].trigger()
    gate = HoldReadingAt(window.worker, 5)
    window.worker.reading.connect(gate)  # holds the worker thread after 5 of 13 parts
    add_images(qtbot, window, [make_image(tmp_path / "red.png")])
    window.gallery.select_paths([str(tmp_path / "red.png")])
    try:
        label = window.chat_panel.reading_label
        qtbot.waitUntil(lambda: label.text() == "Reading the image: 5 of 13 parts" and not label.isHidden(),
                        timeout=TIMEOUT_MS)
        assert not window.chat.busy and window.chat_panel.send_btn.isEnabled()  # reading ahead
        shoot(window, f"13-chat-reading-the-image-{theme}")
    finally:
        gate.open()
    qtbot.waitUntil(lambda: window.chat.ahead is None, timeout=TIMEOUT_MS)
    assert label.isHidden()
    results = []
    window.chat.answered.connect(results.append)
    window.chat.ask("What is this?")
    qtbot.waitUntil(lambda: len(results) == 1, timeout=TIMEOUT_MS)
    assert results[0].timings.tiles_read == 0  # read while the question was typed
    window.chat.ask("And the colour?")
    qtbot.waitUntil(lambda: len(results) == 2, timeout=TIMEOUT_MS)
    assert results[1].timings.tiles_read == 0
    assert results[1].timings.cached_tokens >= results[0].timings.prompt_tokens
    speed = window.status.speed_label.text()
    assert "image" in speed and "prompt" in speed
    tip = window.status.speed_label.toolTip()
    assert "0 parts read" in tip and "Kept for follow-ups:" in tip
    shoot(window, f"13-chat-after-a-follow-up-{theme}")


def test_a_read_ahead_yields_to_another_job_then_goes_on_from_where_it_stopped(
        qtbot, tmp_path: Path) -> None:
    from smolvlm_desktop.worker import LibraryJob

    window = open_window(qtbot, settings=settings(6))
    gate = HoldReadingAt(window.worker, 5)
    window.worker.reading.connect(gate)
    add_images(qtbot, window, [make_image(tmp_path / "red.png")])
    window.gallery.select_paths([str(tmp_path / "red.png")])
    try:
        qtbot.waitUntil(lambda: window.chat_panel.reading_label.text() == "Reading the image: 5 of 13 parts"
                        and not window.chat_panel.reading_label.isHidden(), timeout=TIMEOUT_MS)
        first = window.chat.ahead
        window.worker.submit(LibraryJob(call=lambda library: None))  # the person did something
        assert first is not None and first.cancel.cancelled
        qtbot.waitUntil(lambda: window.chat.ahead is not None and window.chat.ahead is not first,
                        timeout=TIMEOUT_MS)  # started again once that job was queued ahead of it
    finally:
        gate.open()
    qtbot.waitUntil(lambda: window.chat.ahead is None and not window.worker.busy, timeout=TIMEOUT_MS)
    assert window.worker._model.vision_runs == 13  # no tile read twice
    results = []
    window.chat.answered.connect(results.append)
    window.chat.ask("What is this?")
    qtbot.waitUntil(lambda: len(results) == 1, timeout=TIMEOUT_MS)
    assert results[0].timings.tiles_read == 0


def test_images_chosen_while_another_answer_streams_are_read_once_it_ends(qtbot, window,
                                                                           tmp_path: Path) -> None:
    gate = Gate()
    window.worker.token.connect(gate)
    window.settings.max_new_tokens = 4
    window.chat.ask("About red")
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    window.gallery.select_paths([str(tmp_path / "blue.png")])
    assert window.chat.ahead is None  # not while the answer runs
    gate.open()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: window.worker._model.vision_runs == 26 and window.chat.ahead is None,
                    timeout=TIMEOUT_MS)  # red's 13 parts for the answer, then blue's 13 ahead
