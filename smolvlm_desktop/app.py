"""The desktop app's entry: `smolvlm-desktop` with no subcommand, `--demo`, `--self-test`.

The window opens before any model work starts (ONNX Runtime is imported in the worker thread),
then the model loads in the background. `--self-test` is the installers' smoke test: it opens
the window offscreen, runs a chat turn and a two-image batch on the bundled demo model through
the real worker thread, checks the results, closes cleanly and exits 0 (1 with a reason).

The window (also with `--demo`) keeps a local crash log in `<data dir>/logs` (crashlog.py) and
says at the next start when the previous session crashed. `--self-test` does not: it runs in
installers and CI, must leave no files behind (like its settings and library), and reports a
crash through its exit status and stderr already.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_FAILED = 0, 1

# Qt messages that tell a user nothing: the offscreen platform (--self-test, CI) warns on every
# window that it cannot pass size hints to a window manager it does not have.
HARMLESS_QT_MESSAGES = frozenset({"This plugin does not support propagateSizeHints()"})
_qt_filter_installed = False


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smolvlm-desktop", add_help=False)
    parser.add_argument("--demo", action="store_true")
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--self-test-seconds", type=float, default=0.0)
    parser.add_argument("--model")
    args, _ = parser.parse_known_args(list(argv))  # the CLI has already validated the rest
    return args


def make_app(argv: Sequence[str]):  # -> QApplication
    from PySide6.QtWidgets import QApplication

    from .paths import APP_ID, APP_NAME

    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else APP_ID, *argv])
    app.setApplicationName(APP_NAME)
    app.setDesktopFileName(APP_ID)
    return app


def missing_display() -> str | None:
    """What stops the window from opening, said before Qt is asked: on Linux without a display
    Qt's xcb plugin aborts the whole process (SIGABRT) with a page of advice about plugins."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("no display to open the window on (neither DISPLAY nor WAYLAND_DISPLAY is set); "
            "without one, use the commands (`smolvlm-desktop caption IMAGE`, see --help) or run "
            "the window offscreen with QT_QPA_PLATFORM=offscreen")


def drop_harmless_qt_messages() -> None:
    """Drop the messages in HARMLESS_QT_MESSAGES; pass every other one on unchanged (to the
    handler installed before, or to stderr as Qt's default handler prints it). Once per process."""
    global _qt_filter_installed
    if _qt_filter_installed:
        return
    _qt_filter_installed = True
    from PySide6.QtCore import qInstallMessageHandler

    previous = None

    def handler(mode, context, message: str) -> None:  # type: ignore[no-untyped-def]
        if message in HARMLESS_QT_MESSAGES:
            return
        if previous is not None:
            previous(mode, context, message)
            return
        category = context.category if context.category not in (None, "", "default") else None
        print(f"{category}: {message}" if category else message, file=sys.stderr, flush=True)

    previous = qInstallMessageHandler(handler)


def quit_on_signals(app) -> Callable[[], None]:  # app: QApplication
    """SIGTERM (a logout, `kill`) and Ctrl+C close the window as its close button does: a batch
    stops where it can resume, settings are saved and the next start reports no crash.

    Python runs a signal handler only when it next runs bytecode, and Qt's event loop runs
    none while idle; a socket that Qt watches, written by the signal itself
    (signal.set_wakeup_fd), wakes it up."""
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier
    from PySide6.QtWidgets import QApplication

    receiver, sender = socket.socketpair()
    for end in (receiver, sender):
        end.setblocking(False)
    notifier = QSocketNotifier(receiver.fileno(), QSocketNotifier.Type.Read, app)

    def drain() -> None:
        try:
            receiver.recv(64)
        except OSError:
            pass

    def close(*_: object) -> None:
        QApplication.closeAllWindows()
        # Closing the last window quits by itself; a second quit() would stay queued and end
        # the next event loop run in this process at once.
        if not app.quitOnLastWindowClosed() or any(w.isVisible() for w in app.topLevelWidgets()):
            app.quit()

    notifier.activated.connect(drain)
    signals = [getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)]
    previous = {number: signal.signal(number, close) for number in signals}
    previous_fd = signal.set_wakeup_fd(sender.fileno())

    def restore() -> None:
        """Put back what was there before (the app may run inside another program's process)."""
        signal.set_wakeup_fd(previous_fd)
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        notifier.setEnabled(False)
        notifier.deleteLater()
        receiver.close()
        sender.close()

    return restore


def log_dir() -> Path:
    from .paths import data_dir

    return data_dir() / "logs"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    drop_harmless_qt_messages()
    if args.self_test:
        return run_self_test(args.self_test_seconds)
    missing = missing_display()
    if missing:
        from .commands.common import print_error

        print_error(missing)
        return EXIT_FAILED
    from . import crashlog

    app = make_app([])
    restore_signals = quit_on_signals(app)
    start_window(args)
    code = app.exec()
    restore_signals()
    crashlog.disable()  # a clean exit: the next start reports no crash
    return code


def start_window(args: argparse.Namespace):  # -> MainWindow
    """Turn the crash log on, open the window, then load the model and tell of a crash.

    The previous session's crash is read before the log is enabled (which starts this session's
    record), and the log is on before the window is built, so that an error there is logged too.
    """
    from PySide6.QtCore import QTimer

    from . import crashlog
    from .ui.main_window import MainWindow

    folder = log_dir()
    report = crashlog.previous_crash(folder)
    logged = crashlog.enable(folder)
    window = MainWindow()
    if logged:
        window.report_errors(folder)
    window.show()
    # After the first paint: the window is up before anything slow is even started.
    QTimer.singleShot(0, lambda: window.start_model(args.model, demo=args.demo))
    if report:
        QTimer.singleShot(0, lambda: window.show_crash_report(report, folder))
    return window


# --- the self-test -----------------------------------------------------------------------------

class SelfTestFailed(Exception):
    pass


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Run the event loop until `condition` holds; raise SelfTestFailed after the timeout.

    A QEventLoop polled by a QTimer, rather than a processEvents() loop: the latter crashed
    PySide6 6.12 (a refcount error) when called thousands of times.
    """
    from PySide6.QtCore import QEventLoop, QTimer

    deadline = time.monotonic() + timeout_s
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(lambda: loop.quit() if condition() or time.monotonic() > deadline else None)
    if not condition():
        poll.start()
        loop.exec()
        poll.stop()
    if not condition():
        raise SelfTestFailed(f"timed out waiting for {what}")


def make_test_images(folder: Path) -> list[Path]:
    from PIL import Image, ImageDraw

    made = []
    for i, colour in enumerate([(200, 80, 40), (40, 120, 200)]):
        image = Image.new("RGB", (160, 120), colour)
        ImageDraw.Draw(image).ellipse((40, 20, 120, 100), fill=(250, 250, 250))
        path = folder / f"self-test-{i + 1}.png"
        image.save(path)
        made.append(path)
    return made


def run_self_test(min_seconds: float = 0.0) -> int:
    """min_seconds > 0 repeats the chat and the batch (new images each round) until the app
    has run that long: CI's privacy check (scripts/privacy_check.py) needs a run longer than
    the ~9 s after which ONNX Runtime's telemetry used to wake."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory(prefix="smolvlm-self-test-") as tmp:
        try:
            report = _self_test(Path(tmp), min_seconds)
        except SelfTestFailed as exc:
            from .commands.common import print_error

            print_error(f"self-test failed: {exc}")
            return EXIT_FAILED
    print(report)
    return EXIT_OK


def _self_test(tmp: Path, min_seconds: float = 0.0) -> str:
    from .settings import Settings
    from .ui.main_window import MainWindow

    make_app([])
    started = time.monotonic()
    window = MainWindow(Settings(max_new_tokens=8, idle_unload_minutes=0), persist=False)
    window.show()
    rounds = 0
    try:
        window.start_model(demo=True)
        wait_until(lambda: window.model_state in ("ready", "error"), "the demo model to load")
        if window.model_state != "ready":
            raise SelfTestFailed(f"the demo model did not load: {window.status.model_label.toolTip()}")
        while True:
            folder = tmp / f"round-{rounds + 1}"
            folder.mkdir()
            images = make_test_images(folder)
            chat = _self_test_chat(window, images[0])
            batch = _self_test_batch(window, folder, images)
            rounds += 1
            if time.monotonic() - started >= min_seconds:
                break
    finally:
        window.close()
    if window.thread is not None and window.thread.isRunning():
        raise SelfTestFailed("the worker thread still runs after the window closed")
    repeated = f" ({rounds} rounds in {time.monotonic() - started:.0f} s)" if rounds > 1 else ""
    return f"self-test passed: {chat}; {batch}{repeated}"


def _self_test_chat(window, image: Path) -> str:
    window.add_paths([str(image)])
    wait_until(lambda: window.gallery.item_for(str(image)) is not None, "the image in the gallery")
    window.gallery.select_paths([str(image)])  # later rounds: an earlier image is still selected
    wait_until(lambda: window.gallery.selected_paths() == [str(image)], "the image selected")
    results = []
    window.chat.answered.connect(results.append)
    try:
        window.chat.ask("Describe this image.")
        wait_until(lambda: not window.chat.busy, "the chat answer")
    finally:
        window.chat.answered.disconnect(results.append)
    history = window.chat.histories.get((str(image),), [])
    if not results or len(history) != 2 or history[-1].role != "assistant":
        raise SelfTestFailed(f"the chat turn gave no answer ({window.chat.errors or 'no error'})")
    return f"chat answered {results[0].timings.new_tokens} tokens"


def _self_test_batch(window, tmp: Path, images: list[Path]) -> str:
    setup = window.batch_panel.setup
    window.show_batch()
    setup.folder_edit.setText(str(tmp))
    for name, check in setup.format_checks.items():
        check.setChecked(name == "txt")
    done = []

    def collect(job_id, event) -> None:
        done.append(event)

    window.worker.image_done.connect(collect)
    try:
        window.batch.start()
        wait_until(lambda: window.batch.job is not None, "the batch to start", 30)
        wait_until(lambda: window.batch.job is None, "the batch to finish")
    finally:
        window.worker.image_done.disconnect(collect)
    if len(done) != len(images) or window.batch.failures:
        raise SelfTestFailed(f"the batch captioned {len(done)} of {len(images)} images; "
                             f"failures: {window.batch.failures}")
    written = [Path(f) for event in done for f in event.files]
    if not written or not all(f.is_file() for f in written):
        raise SelfTestFailed(f"the batch did not write its caption files: {written}")
    return f"batch captioned {len(done)} images and wrote {len(written)} files"


if __name__ == "__main__":
    sys.exit(main())
