"""Guards against a Qt binding that would crash the app after a few hundred streamed tokens.

PySide6 6.12.0 on Python < 3.12 drops one reference to True per `signal.emit()`; the process
aborts with "bool_dealloc" once the count reaches zero. pyproject excludes that release; this
test fails loudly if such a binding is installed anyway.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    text = Signal(str)


def test_signal_emit_keeps_reference_counts(qapp) -> None:
    emitter = _Emitter()
    received: list[str] = []
    emitter.text.connect(received.append)
    before_true, before_none = sys.getrefcount(True), sys.getrefcount(None)
    for _ in range(300):
        emitter.text.emit("token")
    assert len(received) == 300
    if sys.version_info < (3, 12):  # immortal singletons from 3.12 on: counts are meaningless
        assert sys.getrefcount(True) >= before_true - 5
        assert sys.getrefcount(None) >= before_none - 5
