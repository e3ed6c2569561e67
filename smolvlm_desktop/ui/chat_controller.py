"""Chat behaviour: one conversation per set of selected images, streamed through the worker.

Images go on the first user turn of a conversation (the model sees them once, at the start,
as the engine expects); later turns are text only and carry the whole history. The worker
keeps each conversation's decoder cache, so a follow-up or Regenerate reads only what changed;
and as soon as images are chosen for a new conversation it reads them ahead (ReadAheadJob)
while the question is typed, showing "Reading the image: 5 of 13 parts".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMessageBox

from ..engine.types import GenerationResult, GenerationSettings
from ..presets import preset_prompt
from ..worker import READY, ChatJob, ChatTurn, EngineWorker, ReadAheadJob
from .chat_panel import ChatPanel
from .text import plural, reason_for

Key = tuple[str, ...]
REGENERATE_TEMPERATURE = 0.7  # Regenerate samples when answers are greedy (temperature 0)


class ChatController(QObject):
    """Owns the conversations; the panel only shows them."""

    answered = Signal(object)  # GenerationResult of a finished answer (status bar timings)
    status = Signal(str)  # a short message for the status bar

    def __init__(self, panel: ChatPanel, worker: EngineWorker,
                 generation: Callable[[], GenerationSettings],
                 unreadable: Callable[[], list[tuple[str, str]]] = lambda: []) -> None:
        """unreadable: the selected images that cannot be read, (path, reason) each; they
        are named in the context line and asked about before a question goes without them."""
        super().__init__()
        self.panel, self.worker, self.generation = panel, worker, generation
        self.unreadable = unreadable
        self.histories: dict[Key, list[ChatTurn]] = {}
        self.chat_ids: dict[Key, int] = {}  # the library row of each conversation
        self.errors: dict[Key, str] = {}
        self.key: Key = ()
        self.job: ChatJob | None = None
        self.job_key: Key = ()
        self.ahead: ReadAheadJob | None = None  # the read-ahead of the images shown, if any
        self.live_text = ""
        self.replaced: ChatTurn | None = None  # the answer a running Regenerate would replace
        # Every answer Regenerate gave to a conversation's last question, and the one shown.
        self.answers: dict[Key, list[str]] = {}
        self.shown: dict[Key, int] = {}
        self.last_result: GenerationResult | None = None
        self._connect()
        self.set_images([])

    def _connect(self) -> None:
        p = self.panel
        p.send_btn.clicked.connect(self.send_typed)
        p.prompt.submitted.connect(self.send_typed)
        p.stop_btn.clicked.connect(self.stop)
        p.regen_btn.clicked.connect(self.regenerate)
        p.prev_btn.clicked.connect(lambda: self.show_answer(-1))
        p.next_btn.clicked.connect(lambda: self.show_answer(+1))
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
        self.panel.context_label.setText(self._context(paths, self.unreadable()))
        for key, button in self.panel.preset_buttons.items():
            button.setToolTip(f"Ask: {preset_prompt(key, len(paths))}")
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

    @staticmethod
    def _context(paths: list[str], bad: list[tuple[str, str]]) -> str:
        """The line above the conversation: which images a question goes with, and which
        selected ones cannot be read (they were left out without a word)."""
        names = ", ".join(Path(p).name for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        if bad:
            first, reason = bad[0]
            why = f"{Path(first).name} cannot be read: {reason_for(first, reason)}"
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            if not paths:
                return f"{why}{more}. Select another image, or ask without one."
            total = len(paths) + len(bad)
            return (f"Asking about {len(paths)} of {total} images ({len(bad)} unreadable: "
                    f"{why}{more}): {names}")
        if paths:
            return f"Asking about {plural(len(paths), 'image')}: {names}"
        return ("No image selected: select one or more thumbnails above (Ctrl+A for all), "
                "or ask without an image.")

    @property
    def busy(self) -> bool:
        return self.job is not None

    def send_typed(self) -> None:
        text = self.panel.prompt.toPlainText().strip()
        if text and not self.busy and self.ask(text):
            self.panel.prompt.clear()  # only once asked: Cancel keeps what was typed

    def ask_preset(self, key: str) -> None:
        if not self.busy:
            self.ask(preset_prompt(key, len(self.key)))

    def ask(self, text: str) -> bool:
        """Send a question; False when the user chose not to (unreadable images)."""
        history = self.histories.get(self.key, [])
        first = not any(t.role == "user" for t in history)
        if first and not self._go_without_unreadable():
            return False
        history = self.histories.setdefault(self.key, [])
        self._forget_answers(self.key)  # a new question: its own answers
        images = self.key if first else ()
        history.append(ChatTurn("user", text, images))
        self.errors.pop(self.key, None)
        self._submit(history)
        return True

    def _go_without_unreadable(self) -> bool:
        """Selected images that cannot be read: name them and ask before the question goes
        without them. True when there are none or the user says go."""
        bad = self.unreadable()
        if not bad:
            return True
        lines = "\n".join(f"• {Path(p).name}: {reason_for(p, r)}" for p, r in bad[:5])
        rest = (f"the other {plural(len(self.key), 'image')}" if self.key else "no image at all")
        box = QMessageBox(QMessageBox.Icon.Warning, "Some images cannot be read",
                          f"{plural(len(bad), 'selected image')} cannot be read:\n{lines}\n\n"
                          f"Ask about {rest} without {'it' if len(bad) == 1 else 'them'}?",
                          QMessageBox.StandardButton.Cancel, self.panel)
        go = box.addButton("Ask without it" if len(bad) == 1 else "Ask without them",
                           QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is go

    def regenerate(self) -> None:
        history = self.histories.get(self.key, [])
        if self.busy or not history or history[-1].role != "assistant":
            return
        replaced = history.pop()
        settings = self.generation()
        if settings.temperature == 0:  # greedy gives the same words again: sample another answer
            settings = dataclasses.replace(settings, temperature=REGENERATE_TEMPERATURE, seed=None)
        self._submit(history, replacing=replaced, settings=settings)

    def show_answer(self, step: int) -> None:
        """Another of the answers Regenerate gave; follow-up questions build on the one shown."""
        answers = self.answers.get(self.key, [])
        history = self.histories.get(self.key, [])
        shown = self.shown.get(self.key, 0) + step
        if self.busy or not (0 <= shown < len(answers)) or not history:
            return
        self.shown[self.key] = shown
        history[-1] = ChatTurn("assistant", answers[shown])
        self._render()

    def _forget_answers(self, key: Key) -> None:
        self.answers.pop(key, None)
        self.shown.pop(key, None)

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
            self._forget_answers(self.key)
            self._render()

    # --- jobs ------------------------------------------------------------------------------

    def _submit(self, history: list[ChatTurn], replacing: ChatTurn | None = None,
                settings: GenerationSettings | None = None) -> None:
        """Ask the worker; `replacing` is the answer a Regenerate replaces only once the new
        one is complete (Stop or an error gives it back)."""
        self.job = ChatJob(turns=list(history), settings=settings or self.generation(),
                           chat_id=self.chat_ids.get(self.key), regenerate=replacing is not None)
        self.job_key, self.live_text, self.replaced = self.key, "", replacing
        self._render()
        self.worker.submit(self.job)

    def _mine(self, job_id: int) -> bool:
        return self.job is not None and self.job.job_id == job_id

    @Slot(int, str)
    def _on_token(self, job_id: int, text: str) -> None:
        if self._mine(job_id):
            if not self.live_text:
                text = text.lstrip()  # the first word's leading space is the tokenizer's
                if not text:
                    return
            self.live_text += text
            if self.key == self.job_key:
                self.panel.append_answer(text)

    @Slot(int, object)
    def _on_finished(self, job_id: int, result: GenerationResult) -> None:
        if not self._mine(job_id):
            return
        history = self.histories.setdefault(self.job_key, [])
        self.last_result = result
        if result.stop_reason == "cancelled" and self.replaced is not None:
            self._undo_question(history)  # gives the earlier answer back
            self.status.emit("Stopped: the earlier answer is kept")
            return
        if result.stop_reason == "cancelled" and not result.text.strip():
            self._undo_question(history)
        else:
            history.append(ChatTurn("assistant", result.text.strip()))
            if self.replaced is not None:  # a regenerated answer joins the earlier ones
                answers = self.answers.setdefault(self.job_key, [self.replaced.text])
                answers.append(history[-1].text)
                self.shown[self.job_key] = len(answers) - 1
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
            self.job, self.replaced = None, None
            self.panel.show_reading(0, 0)
            self._render()
            self._read_ahead()  # images chosen while it answered about others

    def _undo_question(self, history: list[ChatTurn]) -> None:
        """A question with no answer leaves the history and goes back to the question box;
        a Regenerate that did not finish gives back the answer it was to replace."""
        if self.replaced is not None:
            history.append(self.replaced)
            self.replaced = None
            return
        if history and history[-1].role == "user":
            turn = history.pop()
            if self.job_key == self.key and not self.panel.prompt.toPlainText():
                self.panel.prompt.setPlainText(turn.text)

    # --- view ------------------------------------------------------------------------------

    def _render(self) -> None:
        history = self.histories.get(self.key, [])
        turns = [(t.role, t.text, self._note(t)) for t in history]
        count, shown = len(self.answers.get(self.key, [])), self.shown.get(self.key, 0)
        if count > 1 and turns and turns[-1][0] == "assistant" and not self.busy:
            turns[-1] = ("assistant", turns[-1][1], f"answer {shown + 1} of {count}")
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
        self.panel.set_alternatives(shown, count, self.busy)

    @staticmethod
    def _note(turn: ChatTurn) -> str:
        n = len(turn.image_paths)
        return f"{n} image{'s' if n != 1 else ''}" if n else ""
