"""The one long-lived worker that owns the model, so that the window never waits on inference.

    worker = EngineWorker()                 # a QObject
    thread = WorkerThread(worker)           # moves it to its own QThread and starts it
    worker.submit(ChatJob(...))             # from the GUI thread; returns at once
    ... worker.token / chat_finished / batch signals arrive on the GUI thread ...
    thread.shutdown()                       # cancels what runs, waits for the thread

Jobs are posted to the worker thread through a queued signal, so they run one after the
other in the order given. Cancel is a CancelToken that each job carries: the GUI thread
cancels it directly (thread-safe) and the engine stops between tokens and inside ONNX Runtime.

Tests can build the worker with `synchronous=True` (as Picard swaps in a synchronous thread
pool): `submit` then runs the job in the calling thread and every signal is delivered before
`submit` returns.

Qt signals are the only way out of here; onnxruntime is imported lazily inside the worker
thread so that the window opens before the engine is even imported.

The library (library/db.py) is opened once, in the worker thread, by the first job that needs
it (the window posts a LibraryJob at start-up). Chat answers and batch captions are recorded
there; if it cannot be opened (a newer schema, a broken file) the worker says so once through
`library_problem` and everything else goes on without it.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from .engine.types import CancelToken, EngineError, GenerationSettings, Message
from .paths import ort_cache_dir

UNLOADED, LOADING, READY, ERROR = "unloaded", "loading", "ready", "error"
_job_ids = itertools.count(1)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how; a different spec makes the worker reload."""

    folder: str
    variant: str | None = None
    provider: str = "auto"
    threads: int | None = None
    demo: bool = False  # the bundled noise model: the window shows a banner


@dataclass
class Job:
    """Base of all jobs: an id to match signals to, and the token that stops it."""

    job_id: int = field(default_factory=lambda: next(_job_ids), init=False)
    cancel: CancelToken = field(default_factory=CancelToken, init=False)


@dataclass
class ChatTurn:
    """One turn as the window keeps it: image *paths*, decoded in the worker, not the UI."""

    role: str
    text: str
    image_paths: tuple[str, ...] = ()


@dataclass
class ChatJob(Job):
    turns: list[ChatTurn] = field(default_factory=list)
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    record: bool = True  # remember the answer in the library (not for a batch trial)
    chat_id: int | None = None  # the library row of this conversation, once it has one
    regenerate: bool = False  # a new answer to the last question: if stopped, the old one stays


@dataclass
class ReadAheadJob(Job):
    """Read the images of a chat about to be asked (their tiles, and the prompt up to them)
    while the person types: background work that any other job stops (see submit)."""

    turns: list[ChatTurn] = field(default_factory=list)  # as they will be asked, question empty
    settings: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass
class BatchJob(Job):
    """A folder or a selection, through the colleague's BatchRunner (no Qt in it)."""

    paths: list[Path] = field(default_factory=list)
    settings: Any = None  # batch.BatchSettings
    resume_job_id: int | None = None  # a library job to finish instead of `paths`
    pause: threading.Event = field(default_factory=threading.Event, init=False)


@dataclass
class LoadJob(Job):
    spec: ModelSpec | None = None


@dataclass(frozen=True)
class Measurement:
    """How long one answer took on this machine, for the batch panel's time estimates."""

    tiles: int  # vision passes (tiles) of its images
    image_ms: float  # preprocessing + vision encoder
    prefill_ms: float  # grows with the image tokens, so counted per tile too
    decode_ms: float
    new_tokens: int
    kind: str = "chat"  # or "batch": a caption of a batch, decoded in a group, of batch length


def tile_count(size: tuple[int, int], cfg: Any, detail: int | None) -> int:
    """Vision passes for an image of size (width, height), as engine/processor.py cuts it."""
    from .engine.processor import fit_longest_edge, fit_whole_tiles

    width, height = size
    if cfg.do_resize:
        height, width = fit_longest_edge(height, width, detail or cfg.longest_edge)
    if not cfg.do_image_splitting:
        return 1
    height, width = fit_whole_tiles(height, width, cfg.tile_size)
    if height <= cfg.tile_size and width <= cfg.tile_size:
        return 1
    return (height // cfg.tile_size) * (width // cfg.tile_size) + 1


@dataclass
class LibraryJob(Job):
    """A short library call in the worker thread: `call(library)`; its value comes back in
    `library_result` (None, without calling, when the library cannot be opened)."""

    call: Callable[[Any], Any] | None = None


AnyJob = Union[ChatJob, ReadAheadJob, BatchJob, LoadJob, LibraryJob]
# Chats whose decoder cache the worker keeps (one per set of images): at most this many and
# this much memory together (the oldest go first); the idle unload drops them all with the model.
KEPT_CONVERSATIONS = 3
KEPT_CONVERSATION_BYTES = 256 * 1024 * 1024


class EngineWorker(QObject):
    """Owns the VisionLanguageModel and runs jobs one at a time; talks only through signals."""

    # state (unloaded/loading/ready/error), ModelInfo or None, a sentence for the user,
    # {graph: reason} of graphs that fell back to the CPU ({} when none did)
    model_state = Signal(str, object, str, object)
    job_started = Signal(int)
    token = Signal(int, str)  # job id, new text
    chat_finished = Signal(int, object)  # job id, GenerationResult
    reading = Signal(int, int, int)  # job id, image tiles read, tiles to read (chat or read-ahead)
    kept_memory = Signal(int, int)  # bytes kept for follow-ups: conversations' caches, image features
    image_started = Signal(int, int, int, str)  # job id, index, total, path
    image_done = Signal(int, object)  # job id, batch.ImageDone
    image_skipped = Signal(int, str, str)  # job id, path, reason
    progress = Signal(int, object)  # job id, batch.Progress (done, total, ETA ...)
    batch_finished = Signal(int, object)  # job id, batch.BatchSummary
    batch_refused = Signal(int, str)  # job id, why it did not start (another process runs it)
    error = Signal(int, str, str)  # job id, path ("" when not about one file), reason
    chat_recorded = Signal(int, int)  # job id, library chat id (pass it on as ChatJob.chat_id)
    library_result = Signal(int, object)  # job id, what a LibraryJob's call returned
    library_problem = Signal(str)  # the library cannot be used; sent once
    measured = Signal(object)  # Measurement of an answer about images (time estimates)
    job_finished = Signal(int)  # always last for a job, after success, cancel or error
    _posted = Signal(object)
    _idle_changed = Signal(int)

    def __init__(self, synchronous: bool = False, idle_unload_ms: int = 0,
                 library_path: str | Path | None = None, use_library: bool = True) -> None:
        """library_path: None = paths.library_path(); use_library=False never opens one."""
        super().__init__()
        self.synchronous = synchronous
        self._library_path = library_path
        self._library_state = "closed" if use_library else "off"  # closed/open/failed/off
        self.library: Any = None  # set in the worker thread; thread-safe to use once open
        self._model: Any = None
        self._spec: ModelSpec | None = None
        self._wanted: ModelSpec | None = None
        self._lock = threading.Lock()
        self._active: dict[int, AnyJob] = {}  # submitted and not finished: cancel_all sees them
        self._closing = False
        self._image_cache: dict[str, Any] = {}  # path -> PIL image of the current chat
        self._image_stamps: dict[str, Any] = {}  # path -> file (mtime, size) when it was decoded
        # image paths of a chat -> its engine Conversation (kept decoder cache), oldest first
        self._conversations: dict[tuple[str, ...], Any] = {}
        self._read_ahead: dict[tuple[str, ...], Any] = {}  # chat images -> Timings of a whole read-ahead
        self._batch_showing: Any = None  # the batch image whose tokens the window streams
        self._idle_ms = idle_unload_ms
        self._idle_timer = QTimer(self)  # a child: moves to the worker thread with us
        self._idle_timer.setSingleShot(True)
        self._idle_timer.timeout.connect(self._unload_when_idle)
        self._posted.connect(self._run)
        self._idle_changed.connect(self._apply_idle)

    # --- called from the GUI thread -------------------------------------------------------

    def set_model(self, spec: ModelSpec, load_now: bool = True) -> LoadJob | None:
        """Remember which model to use; load it in the background unless told to wait."""
        with self._lock:
            self._wanted = spec
        return self.submit(LoadJob(spec=spec)) if load_now else None

    def set_idle_unload(self, ms: int) -> None:
        """Unload the model after `ms` without a job (0 = never); it reloads on demand."""
        if self.synchronous:
            self._apply_idle(ms)
        else:
            self._idle_changed.emit(ms)

    def submit(self, job: AnyJob) -> AnyJob:
        """Queue a job. Anything but a read-ahead stops the read-aheads under way or queued:
        they yield to what the person starts (within the tile being read; the tiles read so
        far are kept, so a question on those images goes on from there)."""
        with self._lock:
            if not isinstance(job, ReadAheadJob):
                for other in self._active.values():
                    if isinstance(other, ReadAheadJob):
                        other.cancel.cancel()
            self._active[job.job_id] = job
        if self.synchronous:
            self._run(job)
        else:
            self._posted.emit(job)
        return job

    def cancel_all(self) -> None:
        """Stop the running job and every queued one (closing the window)."""
        with self._lock:
            self._closing = True
            jobs = list(self._active.values())
        for job in jobs:
            job.cancel.cancel()
            if isinstance(job, BatchJob):
                job.pause.clear()  # a paused batch must wake up to see the cancel

    @property
    def closing(self) -> bool:
        """cancel_all was called: the window is closing; start nothing more."""
        with self._lock:
            return self._closing

    @property
    def busy(self) -> bool:
        with self._lock:
            return any(not isinstance(j, (LoadJob, LibraryJob, ReadAheadJob)) for j in self._active.values())

    # --- runs in the worker thread ----------------------------------------------------------

    @Slot(object)
    def _run(self, job: AnyJob) -> None:
        self._idle_timer.stop()
        self.job_started.emit(job.job_id)
        try:
            if job.cancel.cancelled or self._closing:
                self._finish_cancelled(job)
            elif isinstance(job, LoadJob):
                self._ensure_model(job.spec)
            elif isinstance(job, ChatJob):
                self._run_chat(job)
                self._bound_kept_memory()
            elif isinstance(job, ReadAheadJob):
                self._run_read_ahead(job)
                self._bound_kept_memory()
            elif isinstance(job, BatchJob):
                self._run_batch(job)
            elif isinstance(job, LibraryJob):
                library = self._open_library()
                value = job.call(library) if library is not None and job.call else None
                self.library_result.emit(job.job_id, value)
        except EngineError as exc:
            self.error.emit(job.job_id, "", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must reach the user, not kill the thread
            self.error.emit(job.job_id, "", f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._active.pop(job.job_id, None)
            self.job_finished.emit(job.job_id)
            self._restart_idle_timer()

    def _finish_cancelled(self, job: AnyJob) -> None:
        """A job cancelled before it started still ends the way its kind always ends."""
        if isinstance(job, ChatJob):
            from .engine.types import GenerationResult, Timings

            self.chat_finished.emit(job.job_id, GenerationResult("", [], "cancelled", Timings()))

    def _ensure_model(self, spec: ModelSpec | None = None) -> Any:
        """The loaded model for `spec` (or the wanted one), loading it if needed."""
        with self._lock:
            spec = spec or self._wanted
        if spec is None:
            raise EngineError("no model is chosen; open a model folder or start the demo model")
        if self._model is not None and spec == self._spec:
            return self._model
        self._drop_model()
        self.model_state.emit(LOADING, None, f"Loading {Path(spec.folder).name}…", {})
        try:
            from .engine.model import VisionLanguageModel  # imports onnxruntime: here, not at start

            model = VisionLanguageModel.load(spec.folder, variant=spec.variant,
                                             provider=spec.provider, threads=spec.threads,
                                             cache_dir=ort_cache_dir())
        except EngineError as exc:
            self.model_state.emit(ERROR, None, str(exc), {})
            raise
        except OSError as exc:
            self.model_state.emit(ERROR, None, f"could not read the model: {exc}", {})
            raise EngineError(f"could not read the model: {exc}") from exc
        self._model, self._spec = model, spec
        fallback = dict(model.fallback_notes)
        notes = "; ".join(f"{g} runs on the CPU ({why})" for g, why in fallback.items())
        self.model_state.emit(READY, model.info, notes, fallback)
        return model

    def _open_library(self) -> Any:
        """The library, opened on first use in this thread; None (said once) if it cannot be."""
        if self._library_state == "closed":
            from .library.db import Library

            try:
                self.library = Library(self._library_path)
                self._library_state = "open"
            except Exception as exc:  # noqa: BLE001 - LibraryError, sqlite3 and OS errors
                self._library_state = "failed"
                self.library_problem.emit(
                    "Your library could not be opened, so chats and captions are not being "
                    f"remembered or searchable this session. {exc}")
        return self.library if self._library_state == "open" else None

    def _record(self, what: str, call: Callable[[], Any]) -> Any:
        """One library write; a failure is told once and never stops the job."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - a full disk, a locked file...
            if self._library_state == "open":
                self._library_state = "failed"
                self.library_problem.emit(
                    f"The library stopped working while saving {what}, so later chats and "
                    f"captions are not remembered this session: {exc}")
            return None

    def _drop_model(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model, self._spec = None, None
            self._image_cache.clear()
            self._image_stamps.clear()
            self._conversations.clear()
            self._read_ahead.clear()

    def _run_chat(self, job: ChatJob) -> None:
        model = self._ensure_model()
        messages = self._messages(job)
        if messages is None:
            return
        generation = self._conversation(model, job.turns).stream(
            messages, job.settings, cancel=job.cancel,
            on_progress=lambda read, total: self.reading.emit(job.job_id, read, total))
        for event in generation:
            if event.text:
                self.token.emit(job.job_id, event.text)
        result = generation.result
        sizes = [self._image_cache[p].size for t in job.turns for p in t.image_paths
                 if p in self._image_cache]
        # Measured first: whoever reacts to the finished answer finds its timing already sent.
        self._measure(model, sizes, job.settings.detail, self._with_read_ahead(job.turns, result.timings),
                      result.stop_reason)
        self.chat_finished.emit(job.job_id, result)
        if job.record and result.text.strip() and not (job.regenerate and result.stop_reason == "cancelled"):
            self._record_chat(job, result.text, model.info.name)

    def _run_read_ahead(self, job: ReadAheadJob) -> None:
        """Read a chat's images ahead, with the model already loaded (a background job loads
        nothing); a bad image is left for the question to report."""
        model = self._model
        if model is None or self._spec != self._wanted:
            return
        messages = self._messages(job, quiet=True)
        if messages is None:
            return
        timings = self._conversation(model, job.turns).read_ahead(
            messages, job.settings, cancel=job.cancel,
            on_progress=lambda read, total: self.reading.emit(job.job_id, read, total))
        if timings is not None and timings.tiles_read:
            key = _images_of(job.turns)
            self._read_ahead[key] = _added(self._read_ahead.get(key), timings)

    def _with_read_ahead(self, turns: list[ChatTurn], timings: Any) -> Any:
        """An answer's timings with the read-aheads' reading of its images added back (once),
        so that the time estimates still learn from a question that was read ahead, whole or
        in part (a read-ahead stopped by the question, or by another job, and taken up again)."""
        return _added(self._read_ahead.pop(_images_of(turns), None), timings)

    def _conversation(self, model: Any, turns: list[ChatTurn]) -> Any:
        """The kept Conversation of the chat about these images (made, and the oldest
        forgotten, as needed)."""
        key = _images_of(turns)
        chat = self._conversations.pop(key, None) or model.conversation(KEPT_CONVERSATION_BYTES)
        self._conversations[key] = chat  # now the most recent
        return chat

    def _bound_kept_memory(self) -> None:
        """Forget the oldest conversations beyond the bounds (the latest is always kept: it
        bounds itself), then say what is kept."""
        chats = self._conversations
        while len(chats) > 1 and (len(chats) > KEPT_CONVERSATIONS
                                  or sum(c.nbytes for c in chats.values()) > KEPT_CONVERSATION_BYTES):
            del chats[next(iter(chats))]
        model = self._model
        self.kept_memory.emit(sum(c.nbytes for c in self._conversations.values()),
                              model.features.nbytes if model is not None else 0)

    @staticmethod
    def _tiles(model: Any, sizes: list[tuple[int, int]], detail: int | None) -> int:
        try:
            return sum(tile_count(size, model.files.image_processor, detail) for size in sizes)
        except Exception:  # noqa: BLE001 - an estimate is never worth an error
            return 0

    def _measure(self, model: Any, sizes: list[tuple[int, int]], detail: int | None,
                 timings: Any, stop_reason: str = "", kind: str = "chat") -> None:
        if not sizes or stop_reason == "cancelled" or timings.new_tokens < 1 or timings.image_ms <= 0:
            return
        tiles = self._tiles(model, sizes, detail)
        if not tiles or timings.tiles_read != tiles:  # features kept from before: no estimate
            return
        self.measured.emit(Measurement(tiles, timings.image_ms, timings.prefill_ms,
                                       timings.decode_ms, timings.new_tokens, kind))

    def _measure_file(self, model: Any, path: Any, detail: int | None, timings: Any) -> None:
        from PIL import Image

        try:
            with Image.open(path) as image:  # reads the header only
                size = image.size
        except Exception:  # noqa: BLE001 - a HEIC without its plugin...: no estimate from it
            return
        self._measure(model, [size], detail, timings, kind="batch")

    def _record_chat(self, job: ChatJob, answer: str, model_name: str) -> None:
        library = self._open_library()
        if library is None:
            return
        images = list(dict.fromkeys(p for t in job.turns for p in t.image_paths))
        turns = [(t.role, t.text) for t in job.turns] + [("assistant", answer)]
        chat_id = self._record("a chat", lambda: library.record_chat(
            images, turns, model_name, chat_id=job.chat_id))
        if chat_id is not None:
            self.chat_recorded.emit(job.job_id, chat_id)

    def _messages(self, job: ChatJob | ReadAheadJob, quiet: bool = False) -> list[Message] | None:
        """Decode each image once (kept for later turns); None after reporting a bad image
        (`quiet`: without reporting it)."""
        from .engine.images import load_image

        wanted = {p for t in job.turns for p in t.image_paths}
        for stale in set(self._image_cache) - wanted:
            del self._image_cache[stale]
        messages = []
        for turn in job.turns:
            images = []
            for path in turn.image_paths:
                stamp = _file_stamp(path)
                if path not in self._image_cache or stamp is None or stamp != self._image_stamps.get(path):
                    try:  # decoded again when the file changed (or went) since it was read ahead
                        self._image_cache[path] = load_image(path).image
                        self._image_stamps[path] = stamp
                    except EngineError as exc:
                        if not quiet:
                            self.error.emit(job.job_id, path, str(exc))
                        return None
                images.append(self._image_cache[path])
            # An answer starts with the space of its first token (" The"): the chat template puts
            # "Assistant: " itself, so that space would make a double one, unlike what the model
            # wrote, and the kept conversation would have to read the whole answer again.
            text = turn.text.lstrip() if turn.role == "assistant" else turn.text
            messages.append(Message(turn.role, text, images=tuple(images)))  # type: ignore[arg-type]
        return messages

    def _run_batch(self, job: BatchJob) -> None:
        """Run a batch; `batch_refused` instead, with nothing written, if another process is
        running that library job (or the very same batch, or one writing the same caption
        files for some of its images): see BatchRunner.run."""
        from .batch import BatchRunner, JobBusy

        library = self._open_library()
        if job.resume_job_id is not None and library is None:
            raise EngineError("the batch cannot be resumed: the library that holds it could "
                              "not be opened")
        if job.resume_job_id is not None and library.job_claimed(job.resume_job_id):
            self.batch_refused.emit(job.job_id, str(JobBusy(job.resume_job_id)))
            return  # said before loading a model for nothing
        model = self._ensure_model()
        detail = job.settings.generation.detail

        def on_event(event: Any) -> None:
            self._batch_event(job.job_id, event)
            if type(event).__name__ == "ImageDone" and event.token_ids:
                self._measure_file(model, event.path, detail, event.timings)

        runner = BatchRunner(model, job.settings, library=library, on_event=on_event,
                             model_name=model.info.name)
        try:
            summary = runner.run(job.paths, job_id=job.resume_job_id, cancel=job.cancel,
                                 pause=job.pause)
        except JobBusy as exc:  # claimed since the look above, a twin, or a job writing the same files
            self.batch_refused.emit(job.job_id, str(exc))
            return
        self.batch_finished.emit(job.job_id, summary)

    def _batch_event(self, job_id: int, event: Any) -> None:
        """BatchRunner's plain events become Qt signals (delivered queued to the GUI)."""
        kind = type(event).__name__
        if kind == "ImageStarted":
            self._batch_showing = event.path
            self.image_started.emit(job_id, event.index, event.total, str(event.path))
        elif kind == "TokenDelta":
            # A group of images decodes together; the window streams the one it names as
            # being captioned (the last started), the others arrive whole with image_done.
            if event.path == self._batch_showing:
                self.token.emit(job_id, event.text)
        elif kind == "ImageDone":
            self.image_done.emit(job_id, event)
        elif kind == "ImageSkipped":
            self.image_skipped.emit(job_id, str(event.path), event.reason)
        elif kind == "ImageFailed":
            self.error.emit(job_id, str(event.path), event.reason)
        elif kind == "Progress":
            self.progress.emit(job_id, event)
        elif kind == "LibraryStopped":
            self.library_problem.emit(
                "The library stopped working during the batch, so its captions are written to "
                f"files but not remembered: {event.reason}")

    @Slot(int)
    def _apply_idle(self, ms: int) -> None:
        self._idle_ms = ms
        self._restart_idle_timer()

    def _restart_idle_timer(self) -> None:
        if self._idle_ms > 0 and self._model is not None and not self.synchronous:
            self._idle_timer.start(self._idle_ms)
        else:
            self._idle_timer.stop()

    @Slot()
    def _unload_when_idle(self) -> None:
        with self._lock:
            if self._active:
                return  # a job is queued: it restarts the timer when it ends
        if self._model is not None:
            minutes = self._idle_ms / 60000
            self._drop_model()
            self._bound_kept_memory()
            self.model_state.emit(UNLOADED, None,
                                  f"unloaded after {minutes:g} min idle to free memory; "
                                  "it loads again when needed", {})

    @Slot()
    def release(self) -> None:
        """Drop the model in the thread that owns it (called as the thread finishes)."""
        self._idle_timer.stop()
        self._drop_model()
        self.close_library()

    def close_library(self) -> None:
        if self.library is not None:
            self.library.close()
            self.library = None
            self._library_state = "off"


def _added(ahead: Any, timings: Any) -> Any:
    """`timings` with the reading (tiles, image and prompt time) of `ahead` added; None: as is."""
    if ahead is None:
        return timings
    return dataclasses.replace(timings, image_ms=timings.image_ms + ahead.image_ms,
                               prefill_ms=timings.prefill_ms + ahead.prefill_ms,
                               tiles_read=timings.tiles_read + ahead.tiles_read)


def _images_of(turns: list[ChatTurn]) -> tuple[str, ...]:
    """The image paths of a chat, in order, each once: the key of its kept conversation."""
    return tuple(dict.fromkeys(p for t in turns for p in t.image_paths))


def _file_stamp(path: str) -> tuple[int, int] | None:
    """(mtime, size) of a file, None if it cannot be read."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class WorkerThread(QThread):
    """The QThread an EngineWorker lives in, with a shutdown that never leaves it running."""

    def __init__(self, worker: EngineWorker) -> None:
        super().__init__()
        self.setObjectName("engine-worker")
        self.worker = worker
        worker.moveToThread(self)
        self.finished.connect(worker.release)
        self.start()

    def shutdown(self) -> None:
        """Cancel everything, let the running job end, stop the event loop, wait for it.

        Never returns while the thread runs (no "QThread: Destroyed while thread is still
        running"); a model load in progress cannot be interrupted and is waited for.
        """
        self.worker.cancel_all()
        self.quit()
        self.wait()


class HubTask(QThread):
    """One model-manager operation that can take minutes (a download, an import copy), in a
    thread of its own so that the engine worker stays free for chat and batch.

        task = HubTask(lambda progress, cancel: hub.pull(name, progress=progress, cancel=cancel))
        task.progress.connect(...); task.succeeded.connect(...); task.failed.connect(...)
        task.start() ... task.stop()   # cancel and wait (a pull stops within one chunk)

    `fn(progress, cancel)` gets a callback for hub.PullProgress reports and a threading.Event.
    Exactly one of succeeded(value), cancelled() or failed(message) is sent, on the GUI thread.
    """

    progress = Signal(object)  # hub.PullProgress
    succeeded = Signal(object)  # what fn returned (the model folder)
    cancelled = Signal()
    failed = Signal(str)  # a sentence for the user (hub errors are written for people)

    def __init__(self, fn: Callable[[Callable[[Any], None], threading.Event], Any]) -> None:
        super().__init__()
        self.setObjectName("model-manager")
        self.fn = fn
        self.cancel = threading.Event()

    def run(self) -> None:
        from .hub import HubError, PullCancelled

        try:
            value = self.fn(self.progress.emit, self.cancel)
        except PullCancelled:
            self.cancelled.emit()
        except HubError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - EngineError from a bad folder, OSError...
            self.failed.emit(str(exc) or type(exc).__name__)
        else:
            self.succeeded.emit(value)  # finished: even if Cancel came too late to stop it

    def stop(self) -> None:
        """Cancel and wait: never leaves the thread running (safe to call when finished)."""
        self.cancel.set()
        self.wait()
