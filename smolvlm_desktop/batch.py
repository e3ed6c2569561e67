"""Caption many images in a row, crash-safe and resumable. No Qt: the CLI and the window's
worker thread both drive it, and it talks back through plain event objects.

    runner = BatchRunner(model, BatchSettings(prompt="Describe."), library=lib, on_event=print)
    summary = runner.run(images)                  # a new job in the library
    summary = runner.run([], job_id=7)            # resume: only job 7's pending images run

One process at a time per job: with a library, a run claims its job for its whole length
(library/joblock.py) and raises JobBusy, before writing anything, if another process is
running it. The OS drops the claim of a process that dies, so a crashed job can be resumed.

One image, in order: skip if a caption exists (policy) -> load (the next one is decoded
ahead, on a helper thread) -> generate (in a group of GROUP_SIZE images decoded together;
tokens streamed) -> stage the caption in the job -> write the caption files -> record the
caption and mark the item done (one transaction).

Why a kill -9 at any instant loses at most the image in flight, and nothing is written twice:
- sidecar files (.txt, .json, .xmp...) are written atomically and synced before mark_done;
- a caption is staged in the job before its files are written, so an image killed between
  "files written" and "marked done" is finished on resume with the *same* text, writing
  only the outputs that do not already hold it (see `_Recovery`);
- metadata.jsonl / captions.csv are saved by the writer every few seconds, not per image, so
  a kill can lose the last rows of images already marked done; on resume those rows are put
  back from the captions kept in the job.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from .engine.images import LoadedImage, load_image
from .engine.types import CancelToken, EngineError, GenerationSettings, Message, Timings
from .library import writers
from .library.atomic import OutputError
from .library.db import ItemGone, Library, LibraryError
from .library.joblock import JobBusy, JobClaim  # JobBusy: what run() raises for a taken job

Existing = Literal["skip", "overwrite", "append"]
# Images captioned together: each is read and prefilled alone, then their tokens are decoded
# in one batch (VisionLanguageModel.generate_many), where the decoder gives every row the same
# answer as alone. One decoding step reads all the weights whatever the batch: 256M int8,
# 4 rows cost 11.1 ms a step against 7.5 ms for one. Bigger groups gain less per image and
# hold back the first caption longer.
GROUP_SIZE = 4
PAUSE_POLL_S = 0.05  # how often a paused batch looks at its pause and cancel flags
ETA_WINDOW = 20  # recent images the time-per-image average is taken over


@dataclass(frozen=True)
class BatchSettings:
    prompt: str
    generation: GenerationSettings = GenerationSettings()  # detail lives in here
    outputs: tuple[str, ...] = ("txt",)  # writer formats (writers.FORMATS)
    existing: Existing = "skip"
    aggregate_dir: Path | None = None  # metadata.jsonl / captions.csv (default: common parent)
    embed_metadata: bool = False  # also write into the image's own XMP (optional pyexiv2)

    def __post_init__(self) -> None:
        """Refuse bad settings here, before a job is created for them."""
        unknown = [f for f in self.outputs if f not in writers.FORMATS]
        if unknown or not self.outputs:
            raise ValueError(f"caption formats must be among {', '.join(writers.FORMATS)}; "
                             f"got {', '.join(self.outputs) or 'none'}")
        if self.existing not in writers.EXISTING_POLICIES:
            raise ValueError(f"existing must be one of {', '.join(writers.EXISTING_POLICIES)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the job row, so that `jobs resume` can rebuild the same settings."""
        generation = asdict(self.generation)
        generation["extra_stop_ids"] = list(self.generation.extra_stop_ids)
        return {
            "prompt": self.prompt, "generation": generation, "outputs": list(self.outputs),
            "existing": self.existing,
            "aggregate_dir": str(self.aggregate_dir) if self.aggregate_dir else None,
            "embed_metadata": self.embed_metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BatchSettings":
        """The inverse of to_dict (extra keys such as "model" are ignored)."""
        generation = dict(data.get("generation") or {})
        generation["extra_stop_ids"] = tuple(generation.get("extra_stop_ids", ()))
        aggregate = data.get("aggregate_dir")
        return cls(prompt=data["prompt"], generation=GenerationSettings(**generation),
                   outputs=tuple(data.get("outputs", ("txt",))),
                   existing=data.get("existing", "skip"),
                   aggregate_dir=Path(aggregate) if aggregate else None,
                   embed_metadata=bool(data.get("embed_metadata", False)))


# --- events, delivered synchronously to on_event in the runner's own thread ---------------


@dataclass
class ImageStarted:
    index: int  # position in the whole job (0-based)
    total: int
    path: Path


@dataclass
class TokenDelta:
    path: Path
    text: str


@dataclass
class ImageDone:
    index: int
    total: int
    path: Path
    text: str
    timings: Timings
    files: list[Path]
    notes: list[str]
    token_ids: list[int] = field(default_factory=list)  # empty for a caption finished on resume


@dataclass
class ImageSkipped:
    path: Path
    reason: str


@dataclass
class ImageFailed:
    path: Path  # the image, or an aggregate file that could not be saved
    reason: str


@dataclass
class LibraryStopped:
    """The library failed mid-batch (a full disk, made read-only, damaged): the batch goes on
    writing caption files without recording them in the library. Sent once per run."""

    reason: str


@dataclass
class Progress:
    """Counts over the whole job: a resumed job goes on from where it stopped."""

    done: int
    skipped: int
    failed: int
    total: int
    seconds_per_image: float | None  # over recent captioned images; skips do not count
    eta_seconds: float | None


@dataclass
class Captioned:
    """A caption made by a caption step away from this process (see CaptionStep)."""

    path: Path
    text: str  # stripped, as the files hold it
    timings: Timings
    token_ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class NotCaptioned:
    """An image a caption step could not caption, and why (e.g. a worker cannot read it)."""

    path: Path
    reason: str


# The pluggable "generate" step: given the images to caption (already past the skip check)
# and the run's cancel flag, yield one outcome per image, in any order, as each is ready.
# The runner does everything else (job, staging, writing, marking done), so a step that
# runs elsewhere (cluster.py: a Ray cluster) gets resume, atomic writes and "every image
# once" from the same code as a local batch. An outcome for an image already handled in
# this run is ignored; an image the step never yields stays pending (resumable).
CaptionStep = Callable[[Sequence[Path], CancelToken], Iterable["Captioned | NotCaptioned"]]


@dataclass
class BatchSummary:
    """What this run did (a resumed job's earlier work is not counted again)."""

    job_id: int | None
    done: int
    skipped: int
    failed: list[tuple[Path, str]]
    cancelled: bool
    elapsed_s: float


def common_parent(paths: Sequence[Path]) -> Path:
    """The deepest folder holding every image: the default home of metadata.jsonl/captions.csv."""
    parents = [os.path.abspath(Path(p).parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def timings_from_dict(data: Mapping[str, Any] | None) -> Timings:
    known = Timings.__dataclass_fields__
    return Timings(**{k: v for k, v in (data or {}).items() if k in known})


# --- bookkeeping of one run ----------------------------------------------------------------


@dataclass
class _Tally:
    """Running counts and recent per-image times, for Progress."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    total: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=ETA_WINDOW))

    def progress(self) -> Progress:
        per_image = sum(self.recent) / len(self.recent) if self.recent else None
        left = self.total - self.done - self.skipped - self.failed
        eta = per_image * left if per_image is not None else None
        return Progress(self.done, self.skipped, self.failed, self.total, per_image, eta)


@dataclass
class _Item:
    index: int
    path: Path
    staged: str | None = None  # caption generated before a kill; its files may exist
    timings: dict[str, Any] | None = None


@dataclass
class _Run:
    job_id: int | None
    items: list[_Item]
    tally: _Tally
    aggregate_dir: Path
    summary: BatchSummary
    cancel: CancelToken
    pause: threading.Event | None
    writer: Any = None
    complete: bool = True  # False when an output could not be saved: the job stays resumable
    recording: bool = True  # False once the library failed mid-run (LibraryStopped)
    claim: AbstractContextManager[Any] = field(default_factory=nullcontext)  # JobClaim, held


class BatchRunner:
    """Runs batches over one loaded model. See the module docstring for the flow."""

    def __init__(self, model: Any, settings: BatchSettings, *, library: Library | None = None,
                 on_event: Callable[[object], None] | None = None,
                 model_name: str | None = None, group_size: int | None = None,
                 step: CaptionStep | None = None) -> None:
        self.model = model
        self.step = step  # None: this process's model captions, in groups (see _loop)
        self.settings = settings
        self.group_size = max(1, group_size or GROUP_SIZE)
        self.library = library
        self.on_event = on_event or (lambda event: None)
        info = getattr(model, "info", None)
        self.model_name = model_name or (info.name if info is not None else "unknown model")

    # --- the run ------------------------------------------------------------------------

    def run(self, paths: Sequence[Path], *, job_id: int | None = None,
            cancel: CancelToken | None = None,
            pause: threading.Event | None = None) -> BatchSummary:
        """Caption `paths` (image files: expand folders with discover_images first).

        With a library, a new job records every image; with job_id, that job is resumed
        instead and `paths` is ignored: what an earlier run left half-done is finished
        first, then its pending images run. Build the settings of a resumed job with
        `BatchSettings.from_dict(library.job(job_id).settings)`.

        cancel: stops mid-image; that image stays pending (no file written) and the job is
        marked "cancelled", resumable. pause: while the Event is *set* the batch waits,
        between tokens and between images; clear it to go on. Cancel still works while
        paused (both flags are polled every PAUSE_POLL_S).

        JobBusy, with nothing written, if another process is running that job, or (for a
        new job) the very same batch: see `_claim`."""
        started = time.monotonic()
        run = self._prepare(paths, job_id, cancel or CancelToken(), pause)
        with run.claim:
            self.on_event(run.tally.progress())
            try:
                if job_id is not None:
                    _Recovery(self, run).finish()
                run.writer = self._writer(run.aggregate_dir, self.settings.outputs)
                try:
                    self._loop(run)
                finally:
                    self._close_writer(run)
            finally:
                run.summary.elapsed_s = time.monotonic() - started
            if self._records(run) and run.complete:
                try:
                    self.library.finish_job(run.job_id,
                                            "cancelled" if run.summary.cancelled else "finished")
                except LibraryError:
                    pass  # every image of the job was forgotten meanwhile, the job with them
        return run.summary

    def _loop(self, run: _Run) -> None:
        pending = [item for item in run.items if item.staged is None]  # staged: finished by _Recovery
        if self.step is not None:
            self._stepped(run, pending)
            return
        # Where the decoder cannot decode a group together (the official int8 files), images
        # go one by one, so each streams and is written as soon as it is done.
        size = self.group_size if self.model.decodes_in_batches else 1
        with _Prefetch([item.path for item in pending]) as images:
            for start in range(0, len(pending), size):
                group = list(enumerate(pending[start:start + size], start))
                if self._wait_while_paused(run.pause, run.cancel) or not self._group(run, group, images):
                    run.summary.cancelled = True
                    return

    def _stepped(self, run: _Run, pending: list[_Item]) -> None:
        """The loop with a CaptionStep: skip checks here, captions from the step, then the
        same _finish/_failed as a local group. The time between two outcomes is the time
        per image the ETA uses (with many workers, that is the cluster's throughput); the
        wait for the first is the step's start-up (a cluster joined, models loaded), not
        an image's time, and is left out."""
        todo: dict[Path, _Item] = {}
        for item in pending:
            if self.settings.existing == "skip" and run.writer.has_caption(item.path):
                self._skipped(run, item.path, "a caption already exists")
                self.on_event(run.tally.progress())
            else:
                todo.setdefault(item.path, item)
        last: float | None = None
        assert self.step is not None
        for outcome in self.step(list(todo), run.cancel):
            item = todo.pop(outcome.path, None)
            if item is None:
                continue  # a retried image seen a second time: written once only
            self.on_event(ImageStarted(item.index, run.tally.total, item.path))
            if isinstance(outcome, NotCaptioned):
                self._failed(run, item.path, outcome.reason)
            else:
                self._finish(run, item, (outcome.text, outcome.timings, outcome.token_ids),
                             outcome.notes)
                now = time.monotonic()
                if last is not None:
                    run.tally.recent.append(now - last)
                last = now
            self.on_event(run.tally.progress())
            if run.cancel.cancelled:
                break
        run.summary.cancelled = bool(todo)  # stopped early: the rest stays pending

    def _prepare(self, paths: Sequence[Path], job_id: int | None, cancel: CancelToken,
                 pause: threading.Event | None) -> _Run:
        """The images to run and the counts they start from (a resumed job's earlier work);
        with a library, the job is claimed first and the claim comes back in the _Run."""
        claim: AbstractContextManager[Any] = nullcontext()
        if self.library is None:
            if job_id is not None:
                raise ValueError("resuming a job needs the library it is stored in")
            items = [_Item(i, Path(p)) for i, p in enumerate(paths)]
            tally = _Tally(total=len(items))
            aggregate_dir = self.settings.aggregate_dir or common_parent(list(paths))
        else:
            job_id, claim = self._claim(paths, job_id)
            try:
                items, tally, aggregate_dir = self._job_state(job_id)
            except BaseException:
                claim.release()
                raise
        summary = BatchSummary(job_id, 0, 0, [], False, 0.0)
        return _Run(job_id, items, tally, Path(aggregate_dir), summary, cancel, pause,
                    claim=claim)

    def _claim(self, paths: Sequence[Path], job_id: int | None) -> tuple[int, JobClaim]:
        """The job this run works on, claimed until the run ends (JobBusy if taken).

        A resumed job is claimed before it is touched. A new job is claimed inside the
        transaction that creates it, so that no other process sees it unclaimed and resumes
        it first; and it is refused if another process is running an unfinished job with the
        same settings, model and images (the same command typed twice), or one that writes
        the same kind of caption files for some of the same images, since both would write
        the same files at once."""
        library = self.library
        assert library is not None
        if job_id is not None:
            library.job(job_id)  # an unknown job: LibraryError, before any lock file is made
            claim = library.claim_job(job_id)
            try:
                self._refuse_clashes([item.path for item in library.job_items(job_id)], job_id)
                library.finish_job(job_id, "running")
            except BaseException:
                claim.release()
                raise
            return job_id, claim
        settings = {**self.settings.to_dict(), "model": self.model_name}
        claims: list[JobClaim] = []

        def claim_new(new_id: int) -> None:
            for twin in library.unfinished_jobs_like(settings, paths):
                if twin.id != new_id and library.job_claimed(twin.id):
                    raise JobBusy(twin.id)
            self._refuse_clashes(paths, new_id)
            claims.append(library.claim_job(new_id))

        try:
            return library.create_job(settings, list(paths), on_created=claim_new), claims[0]
        except BaseException:
            for claim in claims:  # claimed, then the commit failed: the job does not exist
                claim.release()
            raise

    def _refuse_clashes(self, paths: Sequence[Path], own_id: int) -> None:
        """JobBusy if another process runs a job writing the same kind of caption files for
        some of these images."""
        assert self.library is not None
        for other, shared in self.library.unfinished_jobs_writing(paths, self.settings.outputs):
            if other.id != own_id and self.library.job_claimed(other.id):
                raise JobBusy(other.id, shared)

    def _job_state(self, job_id: int) -> tuple[list[_Item], _Tally, Path]:
        """A claimed job's pending images, its counts so far and where its jsonl/csv go."""
        assert self.library is not None
        all_items = self.library.job_items(job_id)
        counts = self.library.job(job_id).counts
        tally = _Tally(done=counts["done"], skipped=counts["skipped"],
                       failed=counts["failed"], total=counts["total"])
        items = [_Item(i, it.path, it.caption, it.timings)
                 for i, it in enumerate(all_items) if it.state == "pending"]
        # from all of the job's images, so that a resume puts jsonl/csv in the same place
        aggregate_dir = self.settings.aggregate_dir or common_parent([it.path for it in all_items])
        return items, tally, Path(aggregate_dir)

    def _writer(self, aggregate_dir: Path, formats: Sequence[str]) -> writers.CaptionWriter:
        return writers.CaptionWriter(formats, existing=self.settings.existing,
                                     aggregate_dir=aggregate_dir,
                                     embed=self.settings.embed_metadata)

    def _close_writer(self, run: _Run) -> None:
        """Save jsonl/csv. If that fails the job stays unfinished: a resume saves them again."""
        try:
            run.writer.close()
        except OutputError as exc:
            self._output_failed(run, exc)

    def _output_failed(self, run: _Run, exc: OutputError) -> None:
        """A jsonl/csv file could not be saved: not one image's fault, reported once."""
        run.complete = False
        run.summary.failed.append((exc.path, str(exc)))
        self.on_event(ImageFailed(exc.path, str(exc)))

    # --- a group of images -------------------------------------------------------------

    def _group(self, run: _Run, group: list[tuple[int, _Item]], images: "_Prefetch") -> bool:
        """Caption up to group_size images, decoded together (see GROUP_SIZE); False when the
        batch was cancelled meanwhile (captions finished before the cancel are kept, the
        others stay pending)."""
        clock = _Clock()
        ready: list[tuple[_Item, Any]] = []
        for position, item in group:
            if self.settings.existing == "skip" and run.writer.has_caption(item.path):
                self._skipped(run, item.path, "a caption already exists")
                self.on_event(run.tally.progress())
                continue
            self.on_event(ImageStarted(item.index, run.tally.total, item.path))
            try:
                ready.append((item, images.take(position)))
            except EngineError as exc:  # ImageError: its message names the file's problem
                self._failed(run, item.path, str(exc))
                self.on_event(run.tally.progress())
        if not ready:
            return True
        results = self._generate(run, [item.path for item, _ in ready], [loaded.image for _, loaded in ready], clock)
        finished = [(item, loaded, result) for (item, loaded), result in zip(ready, results) if result is not None]
        per_image = clock.elapsed() / max(1, len(finished))
        for item, loaded, result in finished:
            if isinstance(result, EngineError):
                self._failed(run, item.path, str(result))
            else:
                self._finish(run, item, result, loaded.notes)
                run.tally.recent.append(per_image)
            self.on_event(run.tally.progress())
        return len(finished) == len(ready) and not run.cancel.cancelled

    def _finish(self, run: _Run, item: _Item, result: tuple[str, Timings, list[int]], notes: list[str]) -> None:
        """Stage, write and record one caption."""
        text, timings, token_ids = result
        if self._records(run):
            self._mark(run, self.library.stage_caption, run.job_id, item.path, text, timings)
        try:
            files = run.writer.write(item.path, text, self._meta(timings))
        except OutputError as exc:
            self._failed(run, item.path, str(exc))
            return
        self._done(run, item, text, timings, list(files), notes + run.writer.last_notes, token_ids)

    def _generate(self, run: _Run, paths: list[Path], images: list[Any], clock: "_Clock"
                  ) -> list[tuple[str, Timings, list[int]] | EngineError | None]:
        """Each image's caption and timings, its error, or None where a cancel stopped it
        (nothing of that one is kept; it stays pending for a resume)."""

        def on_token(index: int, event: Any) -> None:
            if event.text:
                self.on_event(TokenDelta(paths[index], event.text))
            if run.pause is not None and run.pause.is_set():
                with clock.paused():
                    self._wait_while_paused(run.pause, run.cancel)

        conversations = [[Message("user", self.settings.prompt, images=(image,))] for image in images]
        results = self.model.generate_many(conversations, self.settings.generation, cancel=run.cancel,
                                           on_token=on_token)
        return [r if isinstance(r, EngineError)
                else None if r.stop_reason == "cancelled"
                else (r.text.strip(), r.timings, r.token_ids)  # the text as the files hold it
                for r in results]

    def _meta(self, timings: Timings) -> writers.CaptionMeta:
        return writers.CaptionMeta(self.model_name, self.settings.prompt, timings.as_dict())

    # --- outcomes -----------------------------------------------------------------------

    def _done(self, run: _Run, item: _Item, text: str, timings: Timings, files: list[Path],
              notes: list[str], token_ids: list[int] | None = None) -> None:
        if self._records(run):
            self._mark(run, self.library.mark_done, run.job_id, item.path, text, timings,
                       model=self.model_name, prompt=self.settings.prompt)
        run.tally.done += 1
        run.summary.done += 1
        self.on_event(ImageDone(item.index, run.tally.total, item.path, text, timings, files, notes,
                                token_ids or []))

    def _skipped(self, run: _Run, path: Path, reason: str) -> None:
        if self._records(run):
            self._mark(run, self.library.mark_skipped, run.job_id, path, reason)
        run.tally.skipped += 1
        run.summary.skipped += 1
        self.on_event(ImageSkipped(path, reason))

    def _failed(self, run: _Run, path: Path, reason: str) -> None:
        if self._records(run):
            self._mark(run, self.library.mark_failed, run.job_id, path, reason)
        run.tally.failed += 1
        run.summary.failed.append((path, reason))
        self.on_event(ImageFailed(path, reason))

    def _records(self, run: _Run) -> bool:
        """Is this run recording its job in the library?"""
        return self.library is not None and run.job_id is not None and run.recording

    def _mark(self, run: _Run, mark: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """One library mark of an image. If the image was forgotten from the job meanwhile
        (`library forget` in a race it cannot see), the batch goes on without recording it;
        if the library fails (SQLite: disk full, read-only, damaged), the batch goes on
        without the library (said once). Caption files are written either way."""
        try:
            mark(*args, **kwargs)
        except ItemGone:
            pass
        except sqlite3.Error as exc:
            run.recording = False
            self.on_event(LibraryStopped(str(exc)))

    @staticmethod
    def _wait_while_paused(pause: threading.Event | None, cancel: CancelToken) -> bool:
        """Block while paused; True if the batch is cancelled (paused or not)."""
        while pause is not None and pause.is_set() and not cancel.cancelled:
            time.sleep(PAUSE_POLL_S)
        return cancel.cancelled


class _Recovery:
    """Finishes what a killed run of this job left behind, before the batch goes on.

    Two leftovers are possible: an image whose caption was staged but not marked done (its
    files may all, some, or none exist), and done images whose jsonl/csv rows were not yet
    saved. For each, only the outputs that do not already hold the job's caption are
    written, so nothing is written twice, not even under the "append" policy.
    """

    def __init__(self, runner: BatchRunner, run: _Run) -> None:
        self.runner = runner
        self.run = run
        self.policy = runner.settings.existing
        self.formats = tuple(runner.settings.outputs)
        self._aggregates: dict[str, dict[str, str]] = {}

    def finish(self) -> None:
        library = self.runner.library
        assert library is not None and self.run.job_id is not None
        staged = [it for it in self.run.items if it.staged is not None]
        aggregate_formats = tuple(f for f in self.formats if f in writers.AGGREGATE_NAMES)
        done = [it for it in library.job_items(self.run.job_id)
                if it.state == "done" and it.caption is not None] if aggregate_formats else []
        plan: dict[tuple[str, ...], list[tuple[Path, str, dict | None]]] = {}
        for item in staged:
            self._plan(plan, item.path, item.staged or "", item.timings, self.formats)
        for row in done:
            self._plan(plan, row.path, row.caption or "", row.timings, aggregate_formats)
        failed = self._write(plan)
        for item in staged:
            self.runner.on_event(ImageStarted(item.index, self.run.tally.total, item.path))
            if item.path in failed:
                self.runner._failed(self.run, item.path, failed[item.path])
            else:
                timings = timings_from_dict(item.timings)
                files = [writers.output_path(item.path, f, self.run.aggregate_dir)
                         for f in self.formats]
                self.runner._done(self.run, item, item.staged or "", timings, files,
                                  ["finished after an interruption"])
            self.runner.on_event(self.run.tally.progress())

    def _plan(self, plan: dict, path: Path, text: str, timings: dict | None,
              formats: Sequence[str]) -> None:
        missing = tuple(f for f in formats if not self._holds(path, f, text))
        if missing:
            plan.setdefault(missing, []).append((path, text, timings))

    def _write(self, plan: dict[tuple[str, ...], list[tuple[Path, str, dict | None]]]
               ) -> dict[Path, str]:
        """One writer per set of missing formats (so jsonl/csv are rewritten once each)."""
        failed: dict[Path, str] = {}
        for formats, entries in plan.items():
            writer = self.runner._writer(self.run.aggregate_dir, formats)
            for path, text, timings in entries:
                meta = writers.CaptionMeta(self.runner.model_name, self.runner.settings.prompt,
                                           dict(timings or {}))
                try:
                    writer.write(path, text, meta)
                except OutputError as exc:
                    failed[path] = str(exc)
            try:
                writer.close()
            except OutputError as exc:  # the rows are not saved: no image of the group is done
                self.runner._output_failed(self.run, exc)
                failed.update((path, str(exc)) for path, _, _ in entries)
        return failed

    def _holds(self, image: Path, fmt: str, text: str) -> bool:
        """Does this output already hold our caption, as the policy would have left it?"""
        current = self._current(image, fmt)
        if current is None:
            return False
        if self.policy == "skip":
            return True  # ours or the user's: either way, skip never touches it
        ours, current = text.strip(), current.strip()
        return current == ours if self.policy == "overwrite" else current.endswith(ours)

    def _current(self, image: Path, fmt: str) -> str | None:
        """The caption an output holds now, None if it holds none."""
        if fmt in writers.AGGREGATE_NAMES:
            key = writers.relative_name(image, self.run.aggregate_dir)
            return self._aggregate(fmt).get(key)
        return _sidecar_caption(writers.output_path(image, fmt), fmt)

    def _aggregate(self, fmt: str) -> dict[str, str]:
        if fmt not in self._aggregates:
            path = writers.aggregate_path(fmt, self.run.aggregate_dir)
            try:
                rows = writers._Aggregate(path, fmt).rows if path.exists() else {}
            except OutputError:
                rows = {}  # unreadable: writing to it fails and says why
            self._aggregates[fmt] = {k: str(r.get("text") or "") for k, r in rows.items()}
        return self._aggregates[fmt]


def _sidecar_caption(path: Path, fmt: str) -> str | None:
    """The text of a .txt/.caption/.json/.xmp sidecar; None when absent or unreadable.

    Reads with the writer's own parsers (writers._read_xmp/_xmp_caption are private: a public
    `read_caption` in writers.py would be better)."""
    try:
        if fmt == "xmp":
            return writers._xmp_caption(writers._read_xmp(path)) if path.exists() else None
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, OutputError):
        return None
    if fmt == "json":
        try:
            row = json.loads(raw)
        except ValueError:
            return None
        return str(row.get("text") or "") if isinstance(row, dict) else None
    return raw or None


class _Prefetch:
    """Decodes the next image on a helper thread while the model captions this one.

    Measured on 12-MP JPEGs (random-weight 256M int8, 2 threads, 32 tokens at 512 px): 1.14 s
    per image in turn, 1.06 s with the next one decoded ahead (load_image takes 87 ms of it).
    Running the next image's vision pass beside this one's decoding was slower on 2 cores
    (0.98 vs 0.89 s per image): both want both cores. Only one image is held ahead, so memory
    stays at one extra decoded photo. A bad file raises its ImageError from `take`, as
    load_image itself would.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-prefetch")
        self._ahead: dict[int, Future[LoadedImage]] = {}

    def take(self, position: int) -> LoadedImage:
        """The image at `position`, decoded; starts decoding the one after it."""
        current = self._ahead.pop(position, None) or self._pool.submit(load_image, self._paths[position])
        following = position + 1
        if following < len(self._paths) and following not in self._ahead:
            self._ahead[following] = self._pool.submit(load_image, self._paths[following])
        return current.result()

    def __enter__(self) -> "_Prefetch":
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._ahead.values():
            future.cancel()
        self._pool.shutdown(wait=True)  # a decode still running ends before the batch returns


class _Clock:
    """Wall time of one image minus the time it sat paused (so the ETA ignores breaks)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.paused_s = 0.0

    def paused(self) -> "_PausedSpan":
        return _PausedSpan(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.start - self.paused_s


class _PausedSpan:
    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.clock.paused_s += time.monotonic() - self.t0
