"""Batch behaviour: from the set-up page to a running BatchJob in the worker to a summary.

The folder is scanned in the task pool (a big tree must not freeze the window), then the
whole list goes to the worker as one job that the colleague's BatchRunner works through.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFileDialog, QListWidgetItem, QMessageBox

from ..engine.types import GenerationResult, GenerationSettings
from ..library.writers import AGGREGATE_NAMES
from ..presets import preset_prompt
from ..settings import Settings
from ..worker import BatchJob, ChatJob, ChatTurn, EngineWorker
from .batch_panel import CUSTOM, DETAIL_LEVEL_TEXT, BatchPanel, model_detail_text, vision_passes
from .tasks import TaskRunner
from .text import local_time, reason_for

PATH_ROLE = 0x0100  # Qt.UserRole


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN: not known yet
        return "…"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


DETAIL_LEVELS = tuple(DETAIL_LEVEL_TEXT)  # 512, 1024, 1536, 2048


class SpeedEstimate:
    """Time per image on this machine, from the answers measured this session (worker.Measurement):
    vision + prefill per tile, decode per token, and the caption length seen so far.

    A batch's own captions are what a batch costs (their length, and their decoding in
    groups); chat answers, often much longer, only stand in until a batch was measured."""

    def __init__(self) -> None:
        self._sums = {kind: _Sums() for kind in ("chat", "batch")}

    def add(self, m: Any) -> None:
        self._sums["batch" if m.kind == "batch" else "chat"].add(m)

    @property
    def _best(self) -> "_Sums":
        return self._sums["batch"] if self._sums["batch"].known else self._sums["chat"]

    @property
    def known(self) -> bool:
        return self._best.known

    @property
    def answers(self) -> int:
        """How many answers the estimate stands on."""
        return self._best.answers

    @property
    def source(self) -> str:
        """What they were, as the estimate's note says it: "batch caption" or "chat answer"."""
        return "batch caption" if self._best is self._sums["batch"] else "chat answer"

    def seconds(self, passes: int) -> float:
        return self._best.seconds(passes)


class _Sums:
    """The measurements of one kind of work, added up."""

    def __init__(self) -> None:
        self.tiles = 0
        self.tile_ms = 0.0
        self.tokens = 0
        self.decode_ms = 0.0
        self.answers = 0

    def add(self, m: Any) -> None:
        self.tiles += m.tiles
        self.tile_ms += m.image_ms + m.prefill_ms
        self.tokens += m.new_tokens
        self.decode_ms += m.decode_ms
        self.answers += 1

    @property
    def known(self) -> bool:
        return self.tiles > 0 and self.tokens > 0

    def seconds(self, passes: int) -> float:
        per_tile = self.tile_ms / self.tiles
        per_token = self.decode_ms / self.tokens
        return (passes * per_tile + self.tokens / self.answers * per_token) / 1000


def short_duration(seconds: float) -> str:
    if seconds < 0.05:
        return "&lt; 0.1 s"  # the estimate label is rich text
    return f"{seconds:.1f} s" if seconds < 10 else format_duration(seconds)


def describe_job(job: Any) -> str:
    """One sentence about an unfinished library job (JobInfo) for the resume bar."""
    c = job.counts
    finished = c.get("done", 0) + c.get("skipped", 0) + c.get("failed", 0)
    folder = job.settings.get("aggregate_dir")
    where = f" of “{Path(folder).name or folder}”" if folder else ""
    verb = "was cancelled" if job.state == "cancelled" else "did not finish"
    return (f"A batch{where} started {local_time(job.created_at)} {verb}: {finished} of {c.get('total', 0)} "
            f"images are done, {c.get('total', 0) - finished} still to caption.")


class BatchController(QObject):
    reveal = Signal(str)  # a failed file the user clicked: select it in the gallery
    status = Signal(str)
    job_ended = Signal()  # a batch ended (finished, cancelled or failed): look for one to resume
    captioned = Signal(list)  # the ended job's captioned images: to index for search by meaning

    def __init__(self, panel: BatchPanel, worker: EngineWorker, tasks: TaskRunner,
                 selection: Callable[[], list[str]], settings: Settings,
                 generation: Callable[[], GenerationSettings]) -> None:
        super().__init__()
        self.panel, self.worker, self.tasks = panel, worker, tasks
        self.selection, self.settings, self.generation = selection, settings, generation
        self.job: BatchJob | None = None
        self.summary: Any = None
        self.started_at = time.monotonic()
        self.trial: ChatJob | None = None
        self.resumable: Any = None  # library JobInfo offered in the resume bar
        self.refused: str | None = None  # why the running BatchJob was not started
        self.speed = SpeedEstimate()
        self.model_edge: int | None = None  # the loaded model's own detail (longest edge)
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.in_flight: dict[str, int] = {}  # started, not yet done: a group decodes together
        self._total = 0
        self._running_title = ""  # the run page's title while not paused
        self.failures: list[tuple[str, str]] = []
        self.written: list[Path] = []  # files the running or last batch wrote
        self.run_folder: Path | None = None  # the folder the last batch captioned, if one
        self._problem_shown = False  # the trial box holds a complaint, not a caption
        self._folder_typed = False  # the user chose a folder this session: never replaced
        self._connect()
        self._load_settings()
        self._preset_changed()
        self.update_actions()

    def _connect(self) -> None:
        s, r, m = self.panel.setup, self.panel.run, self.panel.summary
        s.browse_btn.clicked.connect(self.browse)
        s.preset_combo.currentIndexChanged.connect(self._preset_changed)
        s.start_btn.clicked.connect(self.start)
        s.try_btn.clicked.connect(self.try_one)
        s.folder_edit.textChanged.connect(lambda: s.folder_radio.setChecked(True))
        s.folder_edit.textEdited.connect(lambda: setattr(self, "_folder_typed", True))
        for changed in (s.folder_edit.textChanged, s.folder_radio.toggled, s.recursive_check.toggled,
                        s.prompt_edit.textChanged, *(c.toggled for c in s.format_checks.values())):
            changed.connect(self.update_actions)
        s.resume_btn.clicked.connect(self.resume)
        s.dismiss_btn.clicked.connect(lambda: self.offer_resume(None))
        r.pause_btn.clicked.connect(self.toggle_pause)
        r.cancel_btn.clicked.connect(self.cancel)
        m.back_btn.clicked.connect(lambda: self.panel.setCurrentWidget(s))
        m.open_btn.clicked.connect(self.open_output_folder)
        m.retry_btn.clicked.connect(self.retry_failed)
        m.failures.itemActivated.connect(self._failure_clicked)
        m.failures.itemClicked.connect(self._failure_clicked)
        w = self.worker
        w.image_started.connect(self._on_image_started)
        w.token.connect(self._on_token)
        w.image_done.connect(self._on_image_done)
        w.image_skipped.connect(self._on_image_skipped)
        w.progress.connect(self._on_progress)
        w.error.connect(self._on_error)
        w.batch_finished.connect(self._on_batch_finished)
        w.batch_refused.connect(self._on_batch_refused)
        w.chat_finished.connect(self._on_trial_finished)
        w.job_finished.connect(self._on_job_finished)
        w.measured.connect(self._on_measured)
        w.model_state.connect(self._on_model_state)
        s.detail_combo.currentIndexChanged.connect(self._show_estimate)

    def _load_settings(self) -> None:
        s = self.panel.setup
        s.folder_edit.setText(self.settings.last_folder)
        s.recursive_check.setChecked(self.settings.batch_recursive)
        for name, check in s.format_checks.items():
            check.setChecked(name in self.settings.batch_outputs)
        s.existing_radios.get(self.settings.batch_existing, s.existing_radios["skip"]).setChecked(True)

    def remember_settings(self) -> None:
        """Copy the panel's choices into the settings (saved by the window)."""
        s = self.panel.setup
        self.settings.last_folder = s.folder_edit.text().strip()
        self.settings.batch_recursive = s.recursive_check.isChecked()
        self.settings.batch_outputs = self.outputs()
        self.settings.batch_existing = self.existing()

    # --- reading the set-up page -----------------------------------------------------------

    def prompt(self) -> str:
        return self.panel.setup.prompt_edit.toPlainText().strip()

    def outputs(self) -> tuple[str, ...]:
        return tuple(n for n, c in self.panel.setup.format_checks.items() if c.isChecked())

    def existing(self) -> str:
        return next(k for k, r in self.panel.setup.existing_radios.items() if r.isChecked())

    def generation_settings(self) -> GenerationSettings:
        detail = self.panel.setup.detail_combo.currentData()
        return dataclasses.replace(self.generation(), detail=detail)

    def _preset_changed(self) -> None:
        s = self.panel.setup
        key = s.preset_combo.currentData()
        s.prompt_edit.setReadOnly(key != CUSTOM)
        if key != CUSTOM:
            s.prompt_edit.setPlainText(preset_prompt(key))
        else:
            s.prompt_edit.setFocus()

    def browse(self) -> None:
        start = self.panel.setup.folder_edit.text() or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self.panel, "Folder to caption", start)
        if folder:
            self.set_folder(folder)

    def set_folder(self, folder: str) -> None:
        """The user's choice of folder (Browse…, or a folder dropped on the batch page)."""
        self._folder_typed = True
        self.panel.setup.folder_edit.setText(folder)

    # --- starting --------------------------------------------------------------------------

    def _problem(self, text: str) -> bool:
        """Say what is missing (status bar + the trial box, unless the line beside the buttons
        says it already) and return False. update_actions clears it once it no longer holds."""
        setup = self.panel.setup
        if text != setup.destination.text():
            setup.preview.setPlainText(text)
            self._problem_shown = True
        self.status.emit(text)
        return False

    def source_folder(self) -> Path | None:
        """The typed folder when it is a full path to a folder. An empty field is no choice:
        `Path("")` and `Path(".")` are the folder the app was started from (often home)."""
        text = self.panel.setup.folder_edit.text().strip()
        folder = Path(text).expanduser() if text else None
        return folder if folder is not None and folder.is_absolute() and folder.is_dir() else None

    def _missing(self, writing: bool) -> str:
        """What stops the batch (or, writing=False, the trial) from starting; "" when nothing."""
        s = self.panel.setup
        if not self.prompt():
            return "Write a prompt first."
        if s.folder_radio.isChecked() and self.source_folder() is None:
            typed = s.folder_edit.text().strip()
            return ("Choose a folder of images (Browse…), or use the gallery selection."
                    if typed in ("", ".") else
                    f"Choose a folder that exists: “{typed}” is not the full path of a folder here.")
        if s.selection_radio.isChecked() and not self.selection():
            return "Select images in the gallery first."
        if writing and not self.outputs():
            return "Choose at least one kind of file to write."
        return ""

    def destination_text(self) -> str:
        """Where the files will go, said before anything is written (or what is missing)."""
        missing = self._missing(writing=True)
        if missing:
            return missing
        s = self.panel.setup
        folder = self.source_folder() if s.folder_radio.isChecked() else None
        if folder is not None:
            sub = " and its sub-folders" if s.recursive_check.isChecked() else ""
            beside, into = f"next to each image in {folder}{sub}", f"in {folder}"
        else:
            beside, into = "next to each selected image", "in the selected images' common folder"
        outputs = self.outputs()
        per_image = [f".{f}" for f in outputs if f not in AGGREGATE_NAMES]
        single = [AGGREGATE_NAMES[f] for f in outputs if f in AGGREGATE_NAMES]
        parts = ([f"{', '.join(per_image)} files {beside}"] if per_image else []) + \
                ([f"{' and '.join(single)} {into}"] if single else [])
        return "Writes " + "; ".join(parts) + "."

    def update_actions(self) -> None:
        """Start and Try are on only when they would do something sensible; the line above
        them says where the captions go or what is missing."""
        s = self.panel.setup
        if self._problem_shown:  # an earlier complaint ("No images found there.") is stale now
            s.preview.clear()
            self._problem_shown = False
        s.destination.setText(self.destination_text())
        s.start_btn.setEnabled(not self.busy and not self._missing(writing=True))
        s.try_btn.setEnabled(not self.busy and not self._missing(writing=False))

    def _ready(self, writing: bool) -> bool:
        if self.busy:
            return self._problem("A batch or trial is already running.")
        missing = self._missing(writing)
        return self._problem(missing) if missing else True

    @property
    def busy(self) -> bool:
        return self.job is not None or self.trial is not None

    def start(self) -> None:
        if not self._ready(writing=True):
            return
        if self.existing() == "overwrite" and not self.confirm_overwrite():
            return
        self.remember_settings()
        self._collect(self._start_batch)

    def confirm_overwrite(self) -> bool:
        answer = QMessageBox.question(
            self.panel, "Overwrite captions?",
            "Existing caption files for these images will be replaced. This cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def try_one(self) -> None:
        if self._ready(writing=False):
            self._collect(self._start_trial)

    def _collect(self, then: Callable[[list[Path], list[tuple[Path, str]]], None]) -> None:
        """The images to work on: the gallery selection, or the folder scanned off-thread."""
        s = self.panel.setup
        if s.selection_radio.isChecked():
            then([Path(p) for p in self.selection()], [])
            return
        from ..library.discover import discover_images

        folder, recursive = self.source_folder(), s.recursive_check.isChecked()
        if folder is None:  # the folder went away since the button was enabled
            self._problem(self._missing(writing=False) or "Choose a folder that exists.")
            return
        s.start_btn.setEnabled(False)
        self.status.emit(f"Looking for images in {folder}…")
        self.tasks.run(lambda: discover_images([folder], recursive=recursive),
                       lambda found: (self.update_actions(), then(*found)),
                       lambda exc: (self.update_actions(), self._problem(str(exc))))

    def _nothing_found(self) -> str:
        """Why there is nothing to caption, naming the folder and the likely fix."""
        s = self.panel.setup
        folder = self.source_folder()
        if s.selection_radio.isChecked() or folder is None:
            return "None of the selected images can be read."
        if s.recursive_check.isChecked():
            return f"No images in {folder} nor its sub-folders."
        return f"No images in {folder} itself. Tick Include sub-folders to caption the ones below it."

    def _start_trial(self, images: list[Path], problems: list[tuple[Path, str]]) -> None:
        if not images:
            self._problem(self._nothing_found())
            return
        self.panel.setup.preview.setPlainText("")
        self.trial = ChatJob(turns=[ChatTurn("user", self.prompt(), (str(images[0]),))],
                             settings=self.generation_settings(), record=False)
        self.status.emit(f"Trying the settings on {images[0].name}…")
        self.update_actions()
        self.worker.submit(self.trial)

    def _start_batch(self, images: list[Path], problems: list[tuple[Path, str]]) -> None:
        from ..batch import BatchSettings

        if not images and not problems:
            self._problem(self._nothing_found())
            return
        self.offer_resume(None)  # a new batch replaces the offer; it comes back if still relevant
        s = self.panel.setup
        folder = self.source_folder() if s.folder_radio.isChecked() else None
        settings = BatchSettings(prompt=self.prompt(), generation=self.generation_settings(),
                                 outputs=self.outputs(), existing=self.existing(),
                                 aggregate_dir=folder)
        self.counts = {"done": 0, "skipped": 0, "failed": len(problems)}
        self.in_flight = {}
        self.failures = [(str(p), r) for p, r in problems]
        self.written, self.run_folder = [], folder
        self.started_at = time.monotonic()
        self._show_run_page(len(images))
        self.job = BatchJob(paths=images, settings=settings)
        self.status.emit(f"Batch started: {len(images)} images")
        self.worker.submit(self.job)

    # --- expected time per image ------------------------------------------------------------

    @Slot(object)
    def _on_measured(self, measurement: Any) -> None:
        self.speed.add(measurement)
        self._show_estimate()

    @Slot(str, object, str, object)
    def _on_model_state(self, state: str, info: Any, message: str, fallback: Any) -> None:
        if state == "ready" and info is not None:
            edge = getattr(info, "longest_edge", None)
            if edge != self.model_edge and self.model_edge is not None:
                self.speed = SpeedEstimate()  # another model: earlier timings say nothing
            self.model_edge = edge
            combo = self.panel.setup.detail_combo
            combo.setItemText(combo.findData(None), model_detail_text(edge))
            self._show_estimate()

    def _show_estimate(self) -> None:
        label = self.panel.setup.estimate
        if not self.speed.known:
            label.hide()
            return
        chosen = self.panel.setup.detail_combo.currentData() or self.model_edge
        parts = []
        for level in DETAIL_LEVELS:
            text = f"{level} px ≈ {short_duration(self.speed.seconds(vision_passes(level)))}"
            parts.append(f"<b>{text}</b>" if level == chosen else text)
        n, source = self.speed.answers, self.speed.source
        label.setText("Expected per image on this computer: " + " · ".join(parts)
                      + f"<br>(measured over {n} {source}{'s' if n != 1 else ''} this session, "
                      "for a square image and captions as long as so far)")
        label.setToolTip("512, 1024, 1536 and 2048 px take 1, 5, 10 and 17 vision passes")
        label.show()

    # --- resuming an unfinished job from the library ---------------------------------------

    def offer_resume(self, job: Any) -> None:
        """Show (JobInfo) or hide (None) the bar offering to finish an earlier batch."""
        bar = self.panel.setup.resume_bar
        self.resumable = job if job is not None and not self.busy else None
        if self.resumable is not None:
            bar.text.setText(describe_job(job))
            folder = job.settings.get("aggregate_dir")
            if folder and not self._folder_typed and Path(folder).is_dir():
                self.panel.setup.folder_edit.setText(folder)  # the form matches the offer
            bar.setToolTip(f"Job #{job.id}\nPrompt: {job.settings.get('prompt', '')}\n"
                           f"Model then: {job.settings.get('model', 'unknown')}")
        bar.setVisible(self.resumable is not None)

    def resume(self) -> None:
        """Finish the offered job with its own saved settings (the model loaded now)."""
        from ..batch import BatchSettings

        job = self.resumable
        if job is None or self.busy:
            return
        try:
            settings = BatchSettings.from_dict(job.settings)
        except (KeyError, TypeError, ValueError) as exc:
            self._problem(f"That batch cannot be resumed: its saved settings are not usable ({exc}).")
            return
        c = job.counts
        self.offer_resume(None)
        self.counts = {k: c.get(k, 0) for k in ("done", "skipped", "failed")}
        self.in_flight = {}
        self.failures = []
        agg = job.settings.get("aggregate_dir")
        self.written, self.run_folder = [], Path(agg) if agg else None
        self.started_at = time.monotonic()
        self._show_run_page(c.get("total", 0))
        self._running_title = f"Resuming a batch of {c.get('total', 0)} images…"
        self.panel.run.title.setText(self._running_title)
        self.job = BatchJob(paths=[], settings=settings, resume_job_id=job.id)
        self.status.emit(f"Resuming the batch: {c.get('pending', 0)} images to go")
        self.worker.submit(self.job)

    def _show_run_page(self, total: int) -> None:
        r = self.panel.run
        self._running_title = f"Captioning {total} image{'s' if total != 1 else ''}…"
        r.title.setText(self._running_title)
        r.progress.setFormat("%v / %m")
        r.progress.setRange(0, max(total, 1))
        r.progress.setValue(0)
        r.current.setText("Loading the model…" if total else "Nothing to caption.")
        r.caption.clear()
        r.stats.setText("")
        r.pause_btn.setText("Pause")
        _restyle(r.pause_btn, "")
        r.pause_btn.setEnabled(True)
        r.cancel_btn.setEnabled(True)
        self.panel.setCurrentWidget(r)

    # --- while running ---------------------------------------------------------------------

    def toggle_pause(self) -> None:
        if self.job is None:
            return
        r = self.panel.run
        if self.job.pause.is_set():
            self.job.pause.clear()
            r.pause_btn.setText("Pause")
            _restyle(r.pause_btn, "")
            r.title.setText(self._running_title)
            r.progress.setFormat("%v / %m")
            r.current.setText("")
            self._show_current()
            self.status.emit("Batch resumed")
        else:
            self.job.pause.set()
            r.pause_btn.setText("Resume")
            _restyle(r.pause_btn, "Primary")  # the way on, at a glance
            finished = sum(self.counts.values())
            r.title.setText(f"Paused after {finished} of {r.progress.maximum()} images")
            r.progress.setFormat("%v / %m (paused)")
            r.current.setText("Nothing is being captioned. Resume goes on where it stopped; "
                              "Cancel keeps the captions already written.")
            r.stats.setText(" · ".join(p for p in r.stats.text().split(" · ") if not p.endswith(" left")))
            self.status.emit("Batch paused")

    @property
    def paused(self) -> bool:
        return self.job is not None and self.job.pause.is_set()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel.cancel()
            self.job.pause.clear()
            self.panel.run.cancel_btn.setEnabled(False)
            self.panel.run.pause_btn.setEnabled(False)
            self.panel.run.current.setText("Cancelling…")

    def _mine(self, job_id: int) -> bool:
        return self.job is not None and self.job.job_id == job_id

    def _is_trial(self, job_id: int) -> bool:
        return self.trial is not None and self.trial.job_id == job_id

    @Slot(int, int, int, str)
    def _on_image_started(self, job_id: int, index: int, total: int, path: str) -> None:
        if self._mine(job_id):
            self.in_flight[path] = index
            self._total = total
            self._show_current()
            self.panel.run.caption.clear()

    def _show_current(self) -> None:
        """"Now: a.jpg (3 of 40)", or for a group decoded together "Now: d.jpg and 3 more
        (1–4 of 40)": the named one is the last started, whose words stream below."""
        if not self.in_flight or self.paused:
            return
        name = Path(next(reversed(self.in_flight))).name
        first, last = min(self.in_flight.values()) + 1, max(self.in_flight.values()) + 1
        if len(self.in_flight) == 1:
            text = f"Now: {name}  ({first} of {self._total})"
        else:
            text = f"Now: {name} and {len(self.in_flight) - 1} more  ({first}–{last} of {self._total})"
        self.panel.run.current.setText(text)

    def _finished_one(self, path: str) -> None:
        if self.in_flight.pop(path, None) is not None:
            self._show_current()

    @Slot(int, str)
    def _on_token(self, job_id: int, text: str) -> None:
        if self._mine(job_id):
            self._append(self.panel.run.caption, text)
        elif self._is_trial(job_id):
            self._append(self.panel.setup.preview, text)

    @staticmethod
    def _append(box: Any, text: str) -> None:
        if not box.toPlainText():
            text = text.lstrip()  # the tokenizer's space before the first word
        box.moveCursor(box.textCursor().MoveOperation.End)
        box.insertPlainText(text)

    @Slot(int, object)
    def _on_image_done(self, job_id: int, event: Any) -> None:
        if self._mine(job_id):
            self.counts["done"] += 1
            self.written.extend(f for f in event.files if f not in self.written)
            self._finished_one(str(event.path))
            self.panel.run.caption.setPlainText(event.text)

    @Slot(int, str, str)
    def _on_image_skipped(self, job_id: int, path: str, reason: str) -> None:
        if self._mine(job_id):
            self.counts["skipped"] += 1

    @Slot(int, object)
    def _on_progress(self, job_id: int, p: Any) -> None:
        if not self._mine(job_id):
            return
        r = self.panel.run
        r.progress.setMaximum(max(p.total, 1))
        r.progress.setValue(p.done + p.skipped + p.failed)
        parts = [f"{p.done} captioned", f"{p.skipped} skipped", f"{p.failed} failed"]
        if p.seconds_per_image:
            parts.append(f"{p.seconds_per_image:.1f} s per image")
        if p.eta_seconds is not None and not self.paused:
            parts.append(f"about {format_duration(p.eta_seconds)} left")
        r.stats.setText(" · ".join(parts))

    @Slot(int, str, str)
    def _on_error(self, job_id: int, path: str, reason: str) -> None:
        if self._mine(job_id):
            if path:
                self.counts["failed"] += 1
                self._finished_one(path)
            self.failures.append((path, reason))
        elif self._is_trial(job_id):
            where = f"{Path(path).name}: " if path else ""
            self.panel.setup.preview.setPlainText(f"Could not caption: {where}{reason}")

    @Slot(int, object)
    def _on_trial_finished(self, job_id: int, result: GenerationResult) -> None:
        if self._is_trial(job_id):
            self.panel.setup.preview.setPlainText(result.text.strip() or "(the model gave an empty answer)")
            self.status.emit(f"Trial caption in {result.timings.first_token_ms / 1000 + result.timings.decode_ms / 1000:.1f} s")

    @Slot(int, object)
    def _on_batch_finished(self, job_id: int, summary: Any) -> None:
        if self._mine(job_id):
            self.summary = summary  # failures were already collected, one ImageFailed each

    @Slot(int, str)
    def _on_batch_refused(self, job_id: int, reason: str) -> None:
        if self._mine(job_id):
            self.refused = reason

    @Slot(int)
    def _on_job_finished(self, job_id: int) -> None:
        if self._is_trial(job_id):
            self.trial = None
            self.update_actions()
        elif self._mine(job_id):
            refused, self.job, self.refused = self.refused, None, None
            self.update_actions()  # first: it clears old complaints, not the refusal below
            if refused is not None:
                self._show_refusal(refused)
            else:
                job = getattr(self.summary, "job_id", None)  # _show_summary clears the summary
                self._show_summary()
                self._announce_captioned(job)
            self.job_ended.emit()

    def _announce_captioned(self, job_id: int | None) -> None:
        """The job's captioned (or already captioned) images, read from the library (so a
        resumed job's earlier images count too), for the background indexer, which embeds
        them after the batch, at low priority, skipping those unchanged since embedded."""
        library = self.worker.library
        if library is None or job_id is None:
            return
        self.tasks.run(lambda: [str(item.path) for item in library.job_items(job_id)
                                if item.state in ("done", "skipped")],
                       lambda images: self.captioned.emit(images) if images else None)

    def _show_refusal(self, reason: str) -> None:
        """The batch never started (another process runs it): back to the set-up page with
        the reason, not a summary of a run that did not happen."""
        self.panel.setCurrentWidget(self.panel.setup)
        self._problem(f"The batch was not started: {reason}.")

    # --- summary ---------------------------------------------------------------------------

    def _show_summary(self) -> None:
        m = self.panel.summary
        summary = self.summary
        done = summary.done if summary is not None else self.counts["done"]
        skipped = summary.skipped if summary is not None else self.counts["skipped"]
        cancelled = summary.cancelled if summary is not None else True
        failed = len(self.failures)
        verb = "Cancelled" if cancelled else "Finished"
        m.title.setText(f"{verb}: {done} captioned, {skipped} skipped, {failed} failed")
        elapsed = summary.elapsed_s if summary is not None else time.monotonic() - self.started_at
        folder = self.output_folder()
        where = f" in {folder}" if folder else ""
        m.details.setText(f"Took {format_duration(elapsed)}. " + (
            f"Captions were written next to each image{where}." if self.written else
            "No file was written."))
        base = folder or Path()
        m.show_lists(
            [(_relative(p, base), str(p)) for p in self.written],
            [(f"{Path(p).name if p else 'Batch'}: {reason_for(p, r)}", p or r, p)
             for p, r in self.failures])
        m.open_btn.setEnabled(folder is not None)
        self.summary = None
        self.panel.setCurrentWidget(m)
        self.status.emit(m.title.text())

    def output_folder(self) -> Path | None:
        """Where the last batch wrote: its folder, else the deepest folder holding every file."""
        if not self.written:
            return None
        from ..batch import common_parent

        return self.run_folder or common_parent(self.written)

    def open_output_folder(self) -> None:
        folder = self.output_folder()
        if folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def retry_failed(self) -> None:
        """Caption again only the images that failed (the user may have fixed them), with the
        settings on the set-up page."""
        images = [Path(p) for p, _ in self.failures if p]
        if images and not self.busy and self._ready(writing=True):
            self._start_batch(images, [])

    def _failure_clicked(self, item: QListWidgetItem) -> None:
        path = item.data(PATH_ROLE)
        if path:
            self.reveal.emit(path)


def _restyle(widget: Any, name: str) -> None:
    """Give a widget another style-sheet object name and let the style see it."""
    widget.setObjectName(name)
    widget.style().unpolish(widget)
    widget.style().polish(widget)


def _relative(path: Path, base: Path) -> str:
    """a.txt, or sub/a.txt, for a file under the output folder; the full path otherwise."""
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)
