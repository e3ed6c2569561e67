"""Chat behaviour: one conversation per set of selected images, streamed through the worker.

Images go on the first user turn of a conversation (the model sees them once, at the start,
as the engine expects); later turns are text only and carry the whole history. The worker
keeps each conversation's decoder cache, so a follow-up or Regenerate reads only what changed;
and as soon as images are chosen for a new conversation it reads them ahead (ReadAheadJob)
while the question is typed, showing "Reading the image: 5 of 13 parts".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QGuiApplication

from ..engine.types import GenerationResult, GenerationSettings
from ..presets import preset_prompt
from ..worker import READY, ChatJob, ChatTurn, EngineWorker, ReadAheadJob
from .chat_panel import ChatPanel

Key = tuple[str, ...]


class ChatController(QObject):
    """Owns the conversations; the panel only shows them."""

    answered = Signal(object)  # GenerationResult of a finished answer (status bar timings)
    status = Signal(str)  # a short message for the status bar

    def __init__(self, panel: ChatPanel, worker: EngineWorker,
                 generation: Callable[[], GenerationSettings]) -> None:
        super().__init__()
        self.panel, self.worker, self.generation = panel, worker, generation
        self.histories: dict[Key, list[ChatTurn]] = {}
        self.chat_ids: dict[Key, int] = {}  # the library row of each conversation
        self.errors: dict[Key, str] = {}
        self.key: Key = ()
        self.job: ChatJob | None = None
        self.job_key: Key = ()
        self.ahead: ReadAheadJob | None = None  # the read-ahead of the images shown, if any
        self.live_text = ""
        self.last_result: GenerationResult | None = None
        self._connect()
        self.set_images([])

    def _connect(self) -> None:
        p = self.panel
        p.send_btn.clicked.connect(self.send_typed)
        p.prompt.submitted.connect(self.send_typed)
        p.stop_btn.clicked.connect(self.stop)
        p.regen_btn.clicked.connect(self.regenerate)
        p.copy_btn.clicked.connect(self.copy_answer)
        p.clear_btn.clicked.connect(self.clear)
        p.preset_clicked.connect(self.ask_preset)
        w = self.worker
        w.token.connect(self._on_token)
        w.chat_finished.connect(self._on_finished)
        w.chat_recorded.connect(self._on_recorded)
        w.error.connect(self._on_error)
        w.job_finished.connect(self._on_job_finished)
        w.reading.connect(self._on_reading)
        w.model_state.connect(self._on_model_state)

    # --- user actions ----------------------------------------------------------------------

    def set_images(self, paths: list[str]) -> None:
        """The gallery selection changed: show that image set's conversation."""
        if tuple(paths) != self.key:
            self.panel.show_reading(0, 0)  # until this set's own reading reports
        self.key = tuple(paths)
        names = ", ".join(Path(p).name for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        self.panel.context_label.setText(
            f"Asking about {len(paths)} image{'s' if len(paths) != 1 else ''}: {names}" if paths
            else "No image selected: select one or more thumbnails above (Ctrl+A for all), "
                 "or ask without an image.")
        self._render()
        self._read_ahead()

    def _read_ahead(self) -> None:
        """Start reading a new conversation's images while the question is typed (the worker
        stops it for anything else; a conversation with history has its images read)."""
        if self.ahead is not None and self.ahead.turns[0].image_paths != self.key:
            self.ahead.cancel.cancel()  # other images now: that one is not needed first
            self.ahead = None
        if self.key and not self.histories.get(self.key) and self.ahead is None and not self.busy:
            self.ahead = ReadAheadJob(turns=[ChatTurn("user", "", self.key)], settings=self.generation())
            self.worker.submit(self.ahead)

    @property
    def busy(self) -> bool:
        return self.job is not None

    def send_typed(self) -> None:
        text = self.panel.prompt.toPlainText().strip()
        if text and not self.busy:
            self.panel.prompt.clear()
            self.ask(text)

    def ask_preset(self, key: str) -> None:
        if not self.busy:
            self.ask(preset_prompt(key))

    def ask(self, text: str) -> None:
        history = self.histories.setdefault(self.key, [])
        images = self.key if not any(t.role == "user" for t in history) else ()
        history.append(ChatTurn("user", text, images))
        self.errors.pop(self.key, None)
        self._submit(history)

    def regenerate(self) -> None:
        history = self.histories.get(self.key, [])
        if self.busy or not history or history[-1].role != "assistant":
            return
        history.pop()
        self._submit(history)

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel.cancel()
            self.panel.stop_btn.setEnabled(False)
            self.status.emit("Stopping…")

    def copy_answer(self) -> None:
        history = self.histories.get(self.key, [])
        answers = [t.text for t in history if t.role == "assistant"]
        if answers:
            QGuiApplication.clipboard().setText(answers[-1])
            self.status.emit("Answer copied")

    def clear(self) -> None:
        if not self.busy:
            self.histories.pop(self.key, None)
            self.errors.pop(self.key, None)
            self.chat_ids.pop(self.key, None)  # a new conversation gets its own library row
            self._render()

    # --- jobs ------------------------------------------------------------------------------

    def _submit(self, history: list[ChatTurn]) -> None:
        self.job = ChatJob(turns=list(history), settings=self.generation(),
                           chat_id=self.chat_ids.get(self.key))
        self.job_key, self.live_text = self.key, ""
        self._render()
        self.worker.submit(self.job)

    def _mine(self, job_id: int) -> bool:
        return self.job is not None and self.job.job_id == job_id

    @Slot(int, str)
    def _on_token(self, job_id: int, text: str) -> None:
        if self._mine(job_id):
            self.live_text += text
            if self.key == self.job_key:
                self.panel.append_answer(text)

    @Slot(int, object)
    def _on_finished(self, job_id: int, result: GenerationResult) -> None:
        if not self._mine(job_id):
            return
        history = self.histories.setdefault(self.job_key, [])
        if result.stop_reason == "cancelled" and not result.text.strip():
            self._undo_question(history)
        else:
            history.append(ChatTurn("assistant", result.text))
        self.last_result = result
        if result.stop_reason != "cancelled":
            self.answered.emit(result)
        else:
            self.status.emit("Stopped")

    @Slot(int, int)
    def _on_recorded(self, job_id: int, chat_id: int) -> None:
        if self._mine(job_id):
            self.chat_ids[self.job_key] = chat_id

    @Slot(int, str, str)
    def _on_error(self, job_id: int, path: str, reason: str) -> None:
        if not self._mine(job_id):
            return
        where = f"{Path(path).name}: " if path else ""
        self.errors[self.job_key] = where + reason
        self._undo_question(self.histories.setdefault(self.job_key, []))
        self.status.emit("The answer failed; see the conversation")

    @Slot(str, object, str, object)
    def _on_model_state(self, state: str, *_: object) -> None:
        """A model just loaded: read the images already chosen (a read-ahead loads nothing)."""
        if state == READY:
            self._read_ahead()

    @Slot(int, int, int)
    def _on_reading(self, job_id: int, read: int, total: int) -> None:
        """Tiles read of the images of the conversation shown (its question or read-ahead)."""
        showing = (self._mine(job_id) and self.key == self.job_key) or (
            self.ahead is not None and self.ahead.job_id == job_id and self.ahead.turns[0].image_paths == self.key)
        if showing:
            self.panel.show_reading(read, total, len(self.key))

    @Slot(int)
    def _on_job_finished(self, job_id: int) -> None:
        if self.ahead is not None and self.ahead.job_id == job_id:
            stopped = self.ahead.cancel.cancelled  # something the person started came first
            self.ahead = None
            self.panel.show_reading(0, 0)
            if stopped and not self.worker.closing:
                self._read_ahead()  # goes on from the tiles read, after that job (if still wanted)
        if self._mine(job_id):
            self.job = None
            self.panel.show_reading(0, 0)
            self._render()
            self._read_ahead()  # images chosen while it answered about others

    def _undo_question(self, history: list[ChatTurn]) -> None:
        """A question with no answer leaves the history and goes back to the question box."""
        if history and history[-1].role == "user":
            turn = history.pop()
            if self.job_key == self.key and not self.panel.prompt.toPlainText():
                self.panel.prompt.setPlainText(turn.text)

    # --- view ------------------------------------------------------------------------------

    def _render(self) -> None:
        history = self.histories.get(self.key, [])
        turns = [(t.role, t.text, self._note(t)) for t in history]
        if self.key in self.errors:
            turns.append(("error", self.errors[self.key], ""))
        streaming_here = self.busy and self.key == self.job_key
        self.panel.show_turns(turns)
        if streaming_here:
            self.panel.begin_answer()
            if self.live_text:
                self.panel.append_answer(self.live_text)
        has_answer = any(t.role == "assistant" for t in history)
        self.panel.set_busy(self.busy, has_answer)

    @staticmethod
    def _note(turn: ChatTurn) -> str:
        n = len(turn.image_paths)
        return f"{n} image{'s' if n != 1 else ''}" if n else ""
