"""The local crash log: real child processes that crash, the report shown once, errors.log.

Crashes happen in child processes (a segfault or an abort would end the test run); the window
tests read what a real crashed child left behind in the data dir.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from smolvlm_desktop import app, crashlog, paths  # noqa: E402
from smolvlm_desktop.ui import crash_dialog, theme  # noqa: E402
from ui_helpers import TIMEOUT_MS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys, faulthandler, os, threading
from pathlib import Path
from smolvlm_desktop import crashlog

assert crashlog.enable(Path(sys.argv[1]))

def crash_in_native_code_{how}():
    {crash}

crash_in_native_code_{how}()
"""
CRASHES = {"sigsegv": "faulthandler._sigsegv()", "abort": "os.abort()",
           "clean": "crashlog.disable()",
           "exception": "raise RuntimeError('start-up went wrong 7')",
           "thread": "t = threading.Thread(target=lambda: 1 / 0, name='worker-boom'); "
                     "t.start(); t.join(); crashlog.disable()",
           "wait": "print('ready', flush=True); sys.stdin.readline()"}


def _no_core_dumps() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child(log_dir: Path, how: str, **popen: object) -> subprocess.Popen:
    """A real Python process that enables the crash log in `log_dir`, then does `how`."""
    code = CHILD.format(how=how, crash=CRASHES[how])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log_dir.parent.mkdir(parents=True, exist_ok=True)  # the child's working dir (no core files)
    return subprocess.Popen([sys.executable, "-c", code, str(log_dir)], cwd=log_dir.parent, env=env,
                            preexec_fn=_no_core_dumps if os.name == "posix" else None, **popen)


def run_child(log_dir: Path, how: str) -> subprocess.CompletedProcess:
    process = child(log_dir, how, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def session_ends():
    """Whatever a test enables in this process is disabled again, even when it fails."""
    yield
    crashlog.disable()


# --- crashes in a child process ----------------------------------------------------------------

@pytest.mark.parametrize("how", ["sigsegv", "abort"])
def test_a_native_crash_is_reported_once_with_its_traceback(log_dir: Path, how: str) -> None:
    result = run_child(log_dir, how)
    assert result.returncode != 0, result.stderr
    report = crashlog.previous_crash(log_dir)
    assert report is not None
    assert "Fatal Python error" in report
    assert f"crash_in_native_code_{how}" in report  # the crashing function, from the traceback
    assert "did not shut down normally" in report
    assert crashlog.previous_crash(log_dir) is None  # exactly once
    archived = crashlog.archived_reports(log_dir)
    assert len(archived) == 1 and f"crash_in_native_code_{how}" in archived[0].read_text()
    assert not list(log_dir.glob("running-*"))


def test_a_clean_run_leaves_no_report(log_dir: Path) -> None:
    result = run_child(log_dir, "clean")
    assert result.returncode == 0, result.stderr
    assert (log_dir / "crash.log").exists()  # it did log (so "nothing" below means something)
    assert crashlog.previous_crash(log_dir) is None
    assert not list(log_dir.glob("running-*")) and not crashlog.archived_reports(log_dir)


def test_a_running_instance_is_no_crash_until_it_is_killed(log_dir: Path) -> None:
    process = child(log_dir, "wait", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        assert len(list(log_dir.glob("running-*"))) == 1
        assert crashlog.previous_crash(log_dir) is None  # the other instance still runs
        assert len(list(log_dir.glob("running-*"))) == 1  # and its marker was left alone
    finally:
        process.kill()
        process.communicate(timeout=60)
    report = crashlog.previous_crash(log_dir)
    assert report is not None and "No fatal error was recorded" in report
    assert f"process {process.pid}" in report


def test_an_exception_that_ends_the_app_is_logged_and_reported(log_dir: Path) -> None:
    result = run_child(log_dir, "exception")
    assert result.returncode == 1
    assert "start-up went wrong 7" in result.stderr  # the previous hook still printed it
    errors = (log_dir / "errors.log").read_text()
    assert "RuntimeError: start-up went wrong 7" in errors and "thread MainThread" in errors
    report = crashlog.previous_crash(log_dir)
    assert report is not None and "RuntimeError: start-up went wrong 7" in report


def test_an_uncaught_exception_in_a_thread_is_logged(log_dir: Path) -> None:
    result = run_child(log_dir, "thread")
    assert result.returncode == 0, result.stderr
    errors = (log_dir / "errors.log").read_text()
    assert errors.startswith("=== ") and "thread worker-boom ===" in errors
    assert "ZeroDivisionError: division by zero" in errors and "Traceback" in errors
    assert "ZeroDivisionError" in result.stderr  # and the default hook still printed it
    assert crashlog.previous_crash(log_dir) is None  # an error, not a crash


# --- files -------------------------------------------------------------------------------------

def test_errors_log_is_trimmed_and_keeps_the_newest_entries(log_dir: Path) -> None:
    log_dir.mkdir()
    path = log_dir / "errors.log"
    for i in range(400):
        crashlog.append_error(log_dir, crashlog._entry(f"error number {i}\n" + "x" * 10_000, "s-1", "T"))
        assert path.stat().st_size <= crashlog.ERRORS_LOG_LIMIT
    text = path.read_text()
    assert "error number 399\n" in text and "error number 0\n" not in text
    assert text.startswith("=== ")  # cut at an entry's start, never mid-entry
    crashlog.append_error(log_dir, crashlog._entry("huge\n" + "y" * 5_000_000, "s-1", "T"))
    assert path.stat().st_size <= crashlog.ERRORS_LOG_LIMIT
    assert "characters left out" in path.read_text()


def test_only_the_last_reports_are_kept(log_dir: Path) -> None:
    log_dir.mkdir()
    for i in range(crashlog.ARCHIVES_KEPT + 2):
        (log_dir / "crash.log").write_text(f"Fatal Python error: number {i}\n")
        assert f"number {i}" in crashlog.previous_crash(log_dir)
    kept = [p.read_text() for p in crashlog.archived_reports(log_dir)]
    assert len(kept) == crashlog.ARCHIVES_KEPT
    assert "number 2" in kept[0] and f"number {crashlog.ARCHIVES_KEPT + 1}" in kept[-1]


def test_an_unwritable_log_folder_changes_nothing(tmp_path: Path, session_ends) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the folder should be")
    hook = sys.excepthook
    assert crashlog.enable(blocker) is False
    assert sys.excepthook is hook and crashlog.enabled_dir() is None


def test_this_session_is_not_a_crash_of_its_own(log_dir: Path, session_ends) -> None:
    hook, thread_hook = sys.excepthook, threading.excepthook
    assert crashlog.enable(log_dir)
    assert sys.excepthook is not hook and threading.excepthook is not thread_hook
    assert crashlog.previous_crash(log_dir) is None  # its own marker is held, so alive
    crashlog.disable()
    assert sys.excepthook is hook and threading.excepthook is thread_hook
    assert not list(log_dir.glob("running-*"))


# --- the window --------------------------------------------------------------------------------

@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMOLVLM_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def open_app_window(qtbot):
    """The window as `smolvlm-desktop` opens it (no model installed: the no-model page)."""
    window = app.start_window(app.parse_args([]))
    qtbot.addWidget(window)
    qtbot.waitExposed(window)
    return window


def crash_dialogs(window) -> list[crash_dialog.CrashDialog]:
    return window.findChildren(crash_dialog.CrashDialog)


@pytest.mark.gui
def test_the_window_tells_of_a_crash_left_behind(qtbot, data_dir: Path, session_ends,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    logs = app.log_dir()
    assert logs == data_dir / "logs"
    assert run_child(logs, "sigsegv").returncode != 0
    window = open_app_window(qtbot)
    qtbot.waitUntil(lambda: window.crash_dialog is not None and window.crash_dialog.isVisible(),
                    timeout=TIMEOUT_MS)
    dialog = window.crash_dialog
    assert not dialog.isModal() and QApplication.activeModalWidget() is None
    assert dialog.headline.text() == "SmolVLM Desktop closed unexpectedly last time."
    assert "Nothing was sent anywhere" in dialog.body.text()
    assert not dialog.details.isVisible()
    dialog.toggle.click()
    assert dialog.details.isVisible()
    assert "crash_in_native_code_sigsegv" in dialog.details.toPlainText()
    assert "Fatal Python error: Segmentation fault" in dialog.details.toPlainText()
    dialog.copy_btn.click()
    assert "crash_in_native_code_sigsegv" in QGuiApplication.clipboard().text()
    opened = []
    monkeypatch.setattr(crash_dialog, "reveal_folder", lambda folder: opened.append(folder) or True)
    dialog.folder_btn.click()
    assert opened == [logs]
    assert crashlog.enabled_dir() == logs  # this session logs too
    for name in ("light", "dark"):
        theme.apply(QApplication.instance(), name)
        assert dialog.grab().save(f"/tmp/crash_dialog_{name}.png")
    window.apply_theme()
    assert dialog.grab().save("/tmp/crash_dialog.png")
    assert len(crash_dialogs(window)) == 1


@pytest.mark.gui
def test_the_window_says_nothing_after_a_clean_exit(qtbot, data_dir: Path, session_ends) -> None:
    assert run_child(app.log_dir(), "clean").returncode == 0
    window = open_app_window(qtbot)
    qtbot.wait(300)  # the report would be shown by then (it is queued right after show())
    assert window.crash_dialog is None and not crash_dialogs(window)
    assert crashlog.enabled_dir() == app.log_dir()


@pytest.mark.gui
@pytest.mark.qt_no_exception_capture  # the app's own hook handles the error under test
def test_an_error_in_a_slot_is_shown_once_and_logged(qtbot, data_dir: Path, session_ends) -> None:
    window = open_app_window(qtbot)

    def broken_slot() -> None:
        raise ValueError("a slot that raised 12")

    QTimer.singleShot(0, broken_slot)
    qtbot.waitUntil(lambda: window.error_dialog is not None and window.error_dialog.isVisible(),
                    timeout=TIMEOUT_MS)
    dialog = window.error_dialog
    assert not dialog.isModal()
    assert "ValueError: a slot that raised 12" in dialog.details.toPlainText()
    assert "nothing was sent anywhere" in dialog.body.text()
    assert "ValueError: a slot that raised 12" in (app.log_dir() / "errors.log").read_text()
    QTimer.singleShot(0, lambda: (_ for _ in ()).throw(KeyError("second one 13")))
    qtbot.waitUntil(lambda: "second one 13" in dialog.details.toPlainText(), timeout=TIMEOUT_MS)
    assert len(crash_dialogs(window)) == 1  # once: the second error joined the first message
    assert "Another unexpected error" in window.status.currentMessage()
    assert window.crash_dialog is None  # an error in this session is no crash of the last one


@contextlib.contextmanager
def safety_net() -> Iterator[None]:
    """Quit the app's event loop after TIMEOUT_MS if the test's own way out failed; stopped
    afterwards, so that it cannot end a later test's event loop."""
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(QApplication.quit)
    timer.start(TIMEOUT_MS)
    try:
        yield
    finally:
        timer.stop()


@pytest.mark.gui
def test_a_clean_exit_of_the_app_leaves_no_crash(qtbot, data_dir: Path, session_ends) -> None:
    def close_window() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if w.isVisible() and hasattr(w, "shutdown")]
        if not windows:
            QTimer.singleShot(20, close_window)
            return
        assert (app.log_dir() / "crash.log").exists() and list(app.log_dir().glob("running-*"))
        windows[0].close()

    QTimer.singleShot(0, close_window)
    with safety_net():
        assert app.main([]) == 0
    assert crashlog.enabled_dir() is None
    assert not list(app.log_dir().glob("running-*"))
    assert crashlog.previous_crash(app.log_dir()) is None


@pytest.mark.gui
@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_closes_the_window_as_its_close_button_does(qtbot, data_dir: Path, session_ends) -> None:
    """A logout or `kill` is no crash: the window shuts down (settings saved, batch left
    resumable), the next start reports nothing, and the process's own handlers come back."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    seen: list = []

    def terminate_when_up() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if w.isVisible() and hasattr(w, "shutdown")]
        if not windows:
            QTimer.singleShot(20, terminate_when_up)
            return
        seen.append(windows[0])
        os.kill(os.getpid(), signal.SIGTERM)

    QTimer.singleShot(0, terminate_when_up)
    with safety_net():  # it would end the loop with the window still open
        assert app.main([]) == 0
    assert seen and seen[0]._shut_down  # closed by the signal, not by the safety net
    assert not list(app.log_dir().glob("running-*"))
    assert crashlog.previous_crash(app.log_dir()) is None
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.gui
@pytest.mark.slow
def test_the_self_test_keeps_no_crash_log(qtbot, data_dir: Path, capsys) -> None:
    assert app.main(["--self-test"]) == 0
    assert "self-test passed" in capsys.readouterr().out
    assert not (paths.data_dir() / "logs").exists() and crashlog.enabled_dir() is None
