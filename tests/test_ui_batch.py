"""The batch panel on the real worker thread: progress, pause, cancel, skip, overwrite, summary."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from smolvlm_desktop.settings import Settings  # noqa: E402
from ui_helpers import TIMEOUT_MS, Gate, add_images, make_image, open_window, shoot  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i, colour in enumerate([(200, 60, 60), (60, 200, 60), (60, 60, 200)]):
        make_image(root / f"img{i}.png", colour)
    make_image(root / "nested" / "deep.png", (120, 120, 20))
    return root


@pytest.fixture
def window(qtbot):
    return open_window(qtbot, settings=Settings(max_new_tokens=4, variant="fp32", provider="cpu",
                                                threads=1, idle_unload_minutes=0))


def set_up(window, folder: Path, recursive: bool = False, existing: str = "skip") -> None:
    setup = window.batch_panel.setup
    window.show_batch()
    setup.folder_edit.setText(str(folder))
    setup.recursive_check.setChecked(recursive)
    setup.existing_radios[existing].setChecked(True)


def wait_for_summary(qtbot, window) -> None:
    qtbot.waitUntil(lambda: window.batch_panel.currentWidget() is window.batch_panel.summary,
                    timeout=TIMEOUT_MS)


def test_folder_batch_writes_captions_and_shows_a_summary(qtbot, window, folder: Path) -> None:
    set_up(window, folder, recursive=True)
    gate = Gate()

    def hold_after_first_image(job_id: int, progress) -> None:  # runs in the worker thread
        if progress.done >= 1:
            gate(job_id, progress)

    window.worker.progress.connect(hold_after_first_image)  # the runner also reports 0 done first
    window.batch_panel.setup.start_btn.click()
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    run = window.batch_panel.run
    qtbot.waitUntil(lambda: run.progress.value() >= 1 and "captioned" in run.stats.text(),
                    timeout=TIMEOUT_MS)
    assert window.batch_panel.currentWidget() is run
    assert run.progress.maximum() == 4
    shoot(window, "05-batch-running")
    gate.open()
    wait_for_summary(qtbot, window)
    for name in ("img0", "img1", "img2", "nested/deep"):
        assert (folder / f"{name}.txt").is_file()
    summary = window.batch_panel.summary
    assert "Finished: 4 captioned, 0 skipped, 0 failed" in summary.title.text()
    shoot(window, "05b-batch-summary")


def test_existing_captions_are_skipped_by_default(qtbot, window, folder: Path) -> None:
    (folder / "img1.txt").write_text("my own caption", encoding="utf-8")
    set_up(window, folder)
    window.batch_panel.setup.start_btn.click()
    wait_for_summary(qtbot, window)
    assert (folder / "img1.txt").read_text(encoding="utf-8") == "my own caption"
    assert "2 captioned, 1 skipped, 0 failed" in window.batch_panel.summary.title.text()
    assert not (folder / "nested" / "deep.txt").exists()  # not recursive


def test_overwrite_asks_first_and_cancel_keeps_the_files(qtbot, window, folder: Path) -> None:
    (folder / "img1.txt").write_text("my own caption", encoding="utf-8")
    set_up(window, folder, existing="overwrite")
    answers = [QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Yes]
    seen: list[str] = []

    def answer_dialog() -> None:  # the real modal dialog, answered as a user would
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, answer_dialog)
            return
        seen.append(box.text())
        box.button(answers.pop(0)).click()

    QTimer.singleShot(0, answer_dialog)
    window.batch_panel.setup.start_btn.click()
    assert seen and "replaced" in seen[0]
    assert window.batch.job is None and (folder / "img1.txt").read_text(encoding="utf-8") == "my own caption"
    QTimer.singleShot(0, answer_dialog)
    window.batch_panel.setup.start_btn.click()
    wait_for_summary(qtbot, window)
    assert (folder / "img1.txt").read_text(encoding="utf-8") != "my own caption"


def test_pause_resume_and_cancel_mid_batch(qtbot, window, folder: Path) -> None:
    set_up(window, folder)
    gate = Gate()
    window.worker.image_started.connect(gate)  # holds the worker as the first image starts
    window.batch_panel.setup.start_btn.click()
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    run = window.batch_panel.run
    run.pause_btn.click()
    assert run.pause_btn.text() == "Resume" and window.batch.paused
    gate.open()
    run.pause_btn.click()
    assert run.pause_btn.text() == "Pause" and not window.batch.paused
    run.pause_btn.click()  # pause again, then cancel while paused: cancel must win
    run.cancel_btn.click()
    wait_for_summary(qtbot, window)
    title = window.batch_panel.summary.title.text()
    assert title.startswith("Cancelled")
    written = list(folder.glob("*.txt"))
    assert len(written) < 3


def test_failures_are_listed_and_select_the_file(qtbot, window, folder: Path) -> None:
    broken = folder / "img9.png"
    broken.write_bytes(b"\x89PNG but not really")
    set_up(window, folder)
    window.batch_panel.setup.start_btn.click()
    wait_for_summary(qtbot, window)
    summary = window.batch_panel.summary
    assert "1 failed" in summary.title.text()
    assert summary.failures.count() == 1
    item = summary.failures.item(0)
    assert "img9.png" in item.text()
    shoot(window, "05c-batch-summary-with-failure")
    summary.failures.itemClicked.emit(item)
    qtbot.waitUntil(lambda: window.gallery.item_for(str(broken)) is not None, timeout=TIMEOUT_MS)
    assert window.gallery.item_for(str(broken)).isSelected()


def test_try_on_one_image_writes_nothing(qtbot, window, folder: Path) -> None:
    set_up(window, folder)
    setup = window.batch_panel.setup
    setup.try_btn.click()
    qtbot.waitUntil(lambda: window.batch.trial is None and window.tasks.pending == 0 and
                    setup.preview.toPlainText() != "", timeout=TIMEOUT_MS)
    assert not list(folder.rglob("*.txt"))
    assert window.batch_panel.currentWidget() is setup
    shoot(window, "05a-batch-setup-trial")


def test_gallery_selection_as_the_source(qtbot, window, folder: Path) -> None:
    add_images(qtbot, window, [folder / "img0.png", folder / "img2.png"])
    window.gallery.list.selectAll()
    window.show_batch()
    window.batch_panel.setup.selection_radio.setChecked(True)
    window.batch_panel.setup.start_btn.click()
    wait_for_summary(qtbot, window)
    assert sorted(p.name for p in folder.glob("*.txt")) == ["img0.txt", "img2.txt"]


def test_a_missing_folder_is_explained_not_started(qtbot, window, tmp_path: Path) -> None:
    set_up(window, tmp_path / "nope")
    setup = window.batch_panel.setup
    assert not setup.start_btn.isEnabled()
    window.batch_start()  # Ctrl+B
    assert window.batch.job is None
    assert "folder" in setup.destination.text() and str(tmp_path / "nope") in setup.destination.text()


def test_expected_time_per_detail_level_appears_once_measured(qtbot, window, tmp_path: Path) -> None:
    setup = window.batch_panel.setup
    assert setup.estimate.isHidden(), "no guess before anything was measured"
    reads = []
    window.worker.reading.connect(lambda job_id, read, total: reads.append((read, total)))
    add_images(qtbot, window, [make_image(tmp_path / "a.png", size=(640, 640))])
    # The image is read ahead as soon as it is chosen; a question asked while that runs would
    # read only the rest, and only an answer whose reading is all known counts as a measure.
    qtbot.waitUntil(lambda: any(read == total > 0 for read, total in reads), timeout=TIMEOUT_MS)
    measured = []
    window.worker.measured.connect(measured.append)
    window.chat.ask("Describe this image.")
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=TIMEOUT_MS)
    assert measured and measured[0].tiles >= 1 and measured[0].new_tokens >= 1
    window.show_batch()
    setup.detail_combo.setCurrentIndex(setup.detail_combo.findData(1024))
    assert not setup.estimate.isHidden()
    text = setup.estimate.text()
    for level in ("512 px ≈", "1024 px ≈", "1536 px ≈", "2048 px ≈"):
        assert level in text
    assert "<b>1024 px ≈" in text, "the chosen level stands out"
    assert "measured over 1 chat answer this session" in text
    checks = list(setup.format_checks.values())
    qtbot.waitUntil(lambda: all(c.height() >= c.sizeHint().height() for c in checks),
                    timeout=TIMEOUT_MS)  # the form laid out again with the new row
    shoot(window, "15-batch-time-estimates")


def test_a_group_decoded_together_is_named_as_a_group(qtbot, window, folder: Path) -> None:
    """The four images of a group start together: the line names the one whose words stream
    and says how many more are under way, then counts down as they finish."""
    set_up(window, folder, recursive=True)
    gate = Gate()
    started: list[str] = []

    def hold_at_the_fourth(job_id: int, index: int, total: int, path: str) -> None:  # worker thread
        started.append(path)
        if len(started) == 4:
            gate()

    window.worker.image_started.connect(hold_at_the_fourth)
    window.batch_panel.setup.start_btn.click()
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    current = window.batch_panel.run.current
    qtbot.waitUntil(lambda: "and 3 more" in current.text(), timeout=TIMEOUT_MS)
    assert current.text() == f"Now: {Path(started[-1]).name} and 3 more  (1–4 of 4)"
    shoot(window, "05d-batch-group")
    gate.open()
    wait_for_summary(qtbot, window)
    assert window.batch.in_flight == {}


def test_the_estimate_prefers_what_batches_measured_over_chat_answers() -> None:
    """Issue 15, item 7: one long chat answer made the estimate 9.8 s an image; the batch then
    ran at 3.1-3.9 s. A batch's own captions (their length, their decode speed in groups)
    say what a batch costs; chat answers only stand in until one was measured."""
    from smolvlm_desktop.ui.batch_controller import SpeedEstimate
    from smolvlm_desktop.worker import Measurement

    speed = SpeedEstimate()
    speed.add(Measurement(tiles=13, image_ms=3900, prefill_ms=1300, decode_ms=2000, new_tokens=200,
                          kind="chat"))
    from_chat = speed.seconds(13)
    assert from_chat == pytest.approx((5200 + 2000) / 1000)
    speed.add(Measurement(tiles=13, image_ms=3900, prefill_ms=1300, decode_ms=240, new_tokens=40,
                          kind="batch"))
    assert speed.seconds(13) == pytest.approx((5200 + 240) / 1000)  # the batch's caption length
    speed.add(Measurement(tiles=1, image_ms=300, prefill_ms=100, decode_ms=9000, new_tokens=900,
                          kind="chat"))
    assert speed.seconds(13) == pytest.approx((5200 + 240) / 1000)  # later chats change nothing
