"""A local crash log: what went wrong stays on this computer, in `<data dir>/logs/`.

Nothing here uses the network; the user decides whether to share a report.

- `crash.log`: Python's faulthandler writes the traceback of every thread there when the process
  dies of a fatal signal (a segfault or abort in ONNX Runtime, Qt or Python itself). The file is
  opened once and kept open: after such a crash, no Python code can run to open anything.
- `errors.log`: uncaught Python exceptions (sys.excepthook, threading.excepthook) with a
  timestamp. Exceptions in Qt slots arrive here too (PySide passes them to sys.excepthook); they
  do not end the app, so listeners (the window) can tell the user. Trimmed to stay under ~1 MB.
- `running-<session>`: a marker that a session runs, held under an OS file lock and removed on a
  clean exit. The lock, not a pid, says whether its owner still lives (pids are reused and
  differ between sandboxes): a second instance never mistakes the first for a crash.

`previous_crash()` turns a marker left behind and/or a non-empty crash.log into a report,
returns it once and archives it as `crash-<timestamp>.log` (the last ARCHIVES_KEPT are kept).
"""

from __future__ import annotations

import faulthandler
import os
import platform
import re
import secrets
import sys
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable

from .oslock import try_lock
from .paths import make_private, private_dir, private_opener

CRASH_LOG = "crash.log"
ERRORS_LOG = "errors.log"
MARKER_PREFIX = "running-"
ARCHIVE_PREFIX = "crash-"
ARCHIVES_KEPT = 5
ERRORS_LOG_LIMIT = 1_000_000  # bytes; errors.log is trimmed to half of this when it would pass it
ENTRY_LIMIT = 64_000  # characters of one error entry; the middle of a longer one is left out
HEADER = re.compile(r"^=== .* session (\S+) .*===$", re.MULTILINE)

Listener = Callable[[str], None]


@dataclass
class _Session:
    log_dir: Path
    session_id: str
    crash_file: BinaryIO
    marker: Path
    marker_file: BinaryIO
    previous_excepthook: Callable[..., object]
    previous_threading_hook: Callable[..., object]
    faulthandler_was_on: bool
    listeners: list[Listener] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_session: _Session | None = None


# --- turning it on and off ---------------------------------------------------------------------

def enable(log_dir: Path) -> bool:
    """Start logging crashes and uncaught exceptions of this process into `log_dir`.

    Returns False (and changes nothing) when the folder cannot be written: a crash log must
    never be the reason the app does not start. Call `previous_crash()` first, or its report
    would describe this session.
    """
    global _session
    if _session is not None:
        if _session.log_dir == Path(log_dir):
            return True
        disable()
    log_dir = Path(log_dir)
    try:
        private_dir(log_dir)  # tracebacks can quote prompts and file names: owner-only
        for old in log_dir.iterdir():
            make_private(old)
        crash_file = open(log_dir / CRASH_LOG, "ab", buffering=0,  # append: never lose a report
                          opener=private_opener)
    except OSError:
        return False
    try:
        session_id, marker, marker_file = _create_marker(log_dir)
    except OSError:
        crash_file.close()
        return False
    was_on = faulthandler.is_enabled()
    faulthandler.enable(file=crash_file, all_threads=True)
    _session = _Session(log_dir, session_id, crash_file, marker, marker_file,
                        sys.excepthook, threading.excepthook, was_on)
    sys.excepthook = _excepthook
    threading.excepthook = _threading_excepthook
    return True


def disable() -> None:
    """A clean exit: put the hooks back, stop faulthandler, remove this session's marker."""
    global _session
    session, _session = _session, None
    if session is None:
        return
    if sys.excepthook is _excepthook:  # someone who replaced ours keeps theirs
        sys.excepthook = session.previous_excepthook
    if threading.excepthook is _threading_excepthook:
        threading.excepthook = session.previous_threading_hook
    faulthandler.disable()
    if session.faulthandler_was_on and sys.__stderr__ is not None:
        try:
            faulthandler.enable(file=sys.__stderr__, all_threads=True)
        except (OSError, ValueError):
            pass  # no usable stderr (a windowed app): it stays off
    session.crash_file.close()
    _remove(session.marker)  # before the lock goes, so nobody sees a free, stale marker
    session.marker_file.close()
    _remove(session.marker)  # Windows removes no open file: the first try failed there


def enabled_dir() -> Path | None:
    """The folder this process logs into, or None."""
    return _session.log_dir if _session is not None else None


def add_listener(listener: Listener) -> None:
    """`listener(entry)` after each uncaught exception is logged, in the thread that raised."""
    if _session is not None:
        _session.listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if _session is not None and listener in _session.listeners:
        _session.listeners.remove(listener)


def _create_marker(log_dir: Path) -> tuple[str, Path, BinaryIO]:
    """A new marker file, created exclusively and locked for the life of the process."""
    session_id = f"{os.getpid()}-{secrets.token_hex(4)}"
    marker = log_dir / f"{MARKER_PREFIX}{session_id}"
    handle = open(marker, "xb+", opener=private_opener)
    details = (f"started {_now()}\nprocess {os.getpid()}\npython {platform.python_version()}\n"
               f"platform {platform.platform()}\napp {_app_version()}\n")
    handle.write(details.encode("utf-8"))
    handle.flush()
    if not _locked(handle):
        handle.close()
        _remove(marker)
        raise OSError(f"could not lock {marker}")
    return session_id, marker, handle


def _locked(handle: BinaryIO) -> bool:
    """Take the marker's lock (oslock); False if another session holds it. Per open file, so
    the owner's own check sees it as taken too."""
    try:
        return try_lock(handle.fileno())
    except OSError:
        return False


# --- uncaught exceptions -----------------------------------------------------------------------

def _excepthook(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> None:
    session = _session
    if session is None:
        sys.__excepthook__(exc_type, exc, tb)
        return
    if not issubclass(exc_type, KeyboardInterrupt):  # Ctrl+C in a terminal is no error
        log_exception(exc_type, exc, tb, threading.current_thread().name)
    session.previous_excepthook(exc_type, exc, tb)


def _threading_excepthook(args: threading.ExceptHookArgs) -> None:
    session = _session
    if args.exc_value is not None:
        name = args.thread.name if args.thread is not None else "unknown thread"
        log_exception(args.exc_type, args.exc_value, args.exc_traceback, name)
    hook = session.previous_threading_hook if session is not None else threading.__excepthook__
    hook(args)


def log_exception(exc_type: type[BaseException], exc: BaseException,
                  tb: TracebackType | None, thread: str) -> str:
    """Append the exception to errors.log and tell the listeners; returns the entry.

    Never raises: it runs inside the exception hooks, where a second error would hide the first.
    """
    body = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()
    session = _session
    entry = _entry(body, session.session_id if session else f"{os.getpid()}-none", thread)
    if session is None:
        return entry
    with session.lock:
        try:
            append_error(session.log_dir, entry)
        except OSError:
            pass
        listeners = list(session.listeners)
    for listener in listeners:
        try:
            listener(entry)
        except Exception:  # noqa: BLE001 - a broken listener must not hide the error
            pass
    return entry


def _entry(body: str, session_id: str, thread: str) -> str:
    if len(body) > ENTRY_LIMIT:
        half = ENTRY_LIMIT // 2
        body = f"{body[:half]}\n[... {len(body) - 2 * half} characters left out ...]\n{body[-half:]}"
    return f"=== {_now()} session {session_id} thread {thread} ===\n{body}\n"


def append_error(log_dir: Path, entry: str) -> None:
    """Add one entry to errors.log; when the file would pass ERRORS_LOG_LIMIT, its oldest
    entries go first, so that it keeps the recent half and never grows past the limit."""
    path = Path(log_dir) / ERRORS_LOG
    data = entry.encode("utf-8", "replace")
    size = path.stat().st_size if path.exists() else 0
    if size + len(data) > ERRORS_LOG_LIMIT:
        _trim(path, ERRORS_LOG_LIMIT // 2)
    with open(path, "ab", opener=private_opener) as handle:
        handle.write(data)


def _trim(path: Path, keep: int) -> None:
    """Keep at most the last `keep` bytes, cut at an entry's start; atomic (a new file
    replaces the old one), so a crash while trimming loses nothing."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - keep))
        tail = handle.read().decode("utf-8", "replace")
    start = tail.find("\n=== ")
    kept = tail[start + 1:] if start >= 0 else ""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb", opener=private_opener) as handle:
        handle.write(kept.encode("utf-8"))
    os.replace(temporary, path)


# --- the next start ----------------------------------------------------------------------------

def previous_crash(log_dir: Path) -> str | None:
    """The report of a session that did not end cleanly, exactly once; None when there is none.

    Markers whose lock is free belong to sessions that ended without `disable()`; markers still
    locked belong to running instances (this one included) and are left alone. The report is
    archived, the markers removed and crash.log emptied, so the next call returns None.
    """
    log_dir = Path(log_dir)
    try:
        if not log_dir.is_dir():
            return None
        ended = _ended_sessions(log_dir)
        fatal = _read_text(log_dir / CRASH_LOG).strip()
        if not ended and not fatal:
            return None
        report = _report(log_dir, ended, fatal)
        _archive(log_dir, report)
        for marker, _ in ended:
            _remove(marker)
        if fatal:
            (log_dir / CRASH_LOG).write_bytes(b"")  # truncated, not removed: it may be open
        return report
    except OSError:
        return None


def _ended_sessions(log_dir: Path) -> list[tuple[Path, str]]:
    """(marker, its text) for each marker nobody holds: their sessions did not end cleanly."""
    ended = []
    for marker in sorted(log_dir.glob(f"{MARKER_PREFIX}*")):
        try:
            with open(marker, "rb+") as handle:
                if _locked(handle):
                    handle.seek(0)
                    ended.append((marker, handle.read().decode("utf-8", "replace").strip()))
        except OSError:
            continue  # removed meanwhile, or held (Windows refuses to open locked bytes)
    return ended


def _report(log_dir: Path, ended: list[tuple[Path, str]], fatal: str) -> str:
    lines = ["SmolVLM Desktop closed unexpectedly.", ""]
    for marker, details in ended:
        lines += [f"Session {marker.name[len(MARKER_PREFIX):]} did not shut down normally:",
                  details, ""]
    if fatal:
        lines += ["Fatal error (crash.log):", fatal, ""]
    else:
        lines += ["No fatal error was recorded: the app was probably ended from outside "
                  "(killed, or the computer shut down or lost power).", ""]
    errors = _errors_of(log_dir, {m.name[len(MARKER_PREFIX):] for m, _ in ended})
    if errors:
        lines += ["Errors logged by that session (errors.log):", errors, ""]
    lines.append(f"Reported {_now()} by app {_app_version()}, python {platform.python_version()}, "
                 f"{platform.platform()}.")
    return "\n".join(lines)


def _errors_of(log_dir: Path, sessions: set[str], limit: int = 20_000) -> str:
    """The errors.log entries of these sessions (the last `limit` characters of them)."""
    text = _read_text(log_dir / ERRORS_LOG)
    starts = [m for m in HEADER.finditer(text)]
    picked = [text[m.start():(starts[i + 1].start() if i + 1 < len(starts) else len(text))]
              for i, m in enumerate(starts) if m.group(1) in sessions]
    return "".join(picked).strip()[-limit:]


def _archive(log_dir: Path, report: str) -> None:
    """Save the report as crash-<timestamp>.log and keep only the newest ARCHIVES_KEPT."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")  # sorts in time order
    try:
        with open(log_dir / f"{ARCHIVE_PREFIX}{stamp}.log", "x", encoding="utf-8",
                  opener=private_opener) as handle:
            handle.write(report + "\n")
    except OSError:
        pass  # the report is still returned; saying it once matters more than keeping it
    for old in archived_reports(log_dir)[:-ARCHIVES_KEPT]:
        _remove(old)


def archived_reports(log_dir: Path) -> list[Path]:
    """Archived crash reports, oldest first."""
    return sorted(Path(log_dir).glob(f"{ARCHIVE_PREFIX}*.log"))


# --- small helpers -----------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _now() -> str:
    return datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")


def _app_version() -> str:
    from . import __version__

    return __version__
