"""Small jobs off the GUI thread (thumbnails, folder scans), results back on the GUI thread.

Like Picard's thread pool: the function runs in a QThreadPool, its result or error is posted
back through a signal of an object that lives in the GUI thread, so every callback runs there.
With `synchronous=True` (tests) `run` calls the function and the callback before returning.
"""

from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

Callback = Callable[[Any], None]


class _Task(QRunnable):
    def __init__(self, runner: "TaskRunner", fn: Callable[[], Any], on_done: Callback,
                 on_failed: Callback | None) -> None:
        super().__init__()
        self.runner, self.fn, self.on_done, self.on_failed = runner, fn, on_done, on_failed

    def run(self) -> None:
        try:
            packet = (self.on_done, self.fn())
        except Exception as exc:  # noqa: BLE001 - reported to the callback, never lost
            packet = (self.on_failed, exc)
        self.runner.posted.emit(packet)


class TaskRunner(QObject):
    """A thread pool whose callbacks run on the thread that owns this object (the GUI)."""

    posted = Signal(object)

    def __init__(self, parent: QObject | None = None, synchronous: bool = False,
                 threads: int = 2) -> None:
        super().__init__(parent)
        self.synchronous = synchronous
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self.pending = 0
        self._closed = False
        self.posted.connect(self._deliver)

    def run(self, fn: Callable[[], Any], on_done: Callback, on_failed: Callback | None = None) -> None:
        if self._closed:
            return
        self.pending += 1
        task = _Task(self, fn, on_done, on_failed)
        if self.synchronous:
            task.run()
        else:
            self.pool.start(task)

    @Slot(object)
    def _deliver(self, packet: tuple[Callback | None, Any]) -> None:
        self.pending -= 1
        callback, value = packet
        if self._closed:
            return
        if callback is not None:
            callback(value)
        elif isinstance(value, Exception):
            raise value

    def shutdown(self) -> None:
        """Drop queued tasks and wait for running ones; no callback runs afterwards."""
        self._closed = True
        self.pool.clear()
        self.pool.waitForDone()
