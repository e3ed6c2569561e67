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
