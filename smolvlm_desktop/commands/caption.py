"""`smolvlm-desktop caption PATH...`: answer one prompt about each image, headless.

Without --write the answers are printed (streamed for plain output). With --write the images
go through the same batch runner as the window: caption files written atomically, existing
captions respected, and the job recorded in the library so that running the same command
again after a crash (or `jobs resume N`) finishes it. A job another SmolVLM Desktop process is
running is never run a second time: the command says so in one line and exits with
EXIT_ERROR, having written nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, UsageError, print_json
from ..engine.images import load_image
from ..engine.model import VisionLanguageModel
from ..engine.types import EngineError, GenerationResult, GenerationSettings, Message
from ..library.joblock import JobBusy
from ..paths import ort_cache_dir, resolve_model
from ..presets import DEFAULT_PRESET, preset_prompt


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    try:
        return GenerationSettings(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, seed=args.seed, repetition_penalty=args.repetition_penalty,
            detail=args.detail,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def prompt_text(args: argparse.Namespace) -> str:
    return args.prompt if args.prompt is not None else preset_prompt(args.preset or DEFAULT_PRESET)


def load_model(args: argparse.Namespace) -> VisionLanguageModel:
    folder = resolve_model(args.model)
    model = VisionLanguageModel.load(folder, variant=args.variant, provider=args.provider,
                                     threads=args.threads, cache_dir=ort_cache_dir())
    for graph, reason in model.fallback_notes.items():
        print(f"note: {graph} runs on the CPU ({reason})", file=sys.stderr)
    return model


def expand_paths(args: argparse.Namespace) -> tuple[list[Path], list[tuple[Path, str]]]:
    from ..library.discover import discover_images

    return discover_images([Path(p) for p in args.paths], recursive=args.recursive)


def run_caption(args: argparse.Namespace) -> int:
    settings = generation_settings(args)
    prompt = prompt_text(args)
    images, problems = expand_paths(args)
    if args.embed_metadata and not args.write:
        raise UsageError("--embed-metadata goes with --write")
    step = None
    if args.cluster:  # the same batch, its captions made on a Ray cluster
        from ..cluster import prepare

        model, step = prepare(args, prompt, settings)
    else:
        model = load_model(args)
    reporter = Reporter(args, model)
    for path, reason in problems:
        reporter.failed(path, reason)
    if args.write:
        try:
            failed = run_batch(args, model, images, prompt, settings, reporter, step)
        except JobBusy as exc:
            return refuse(exc)
    else:
        failed = run_plain(args, model, images, prompt, settings, reporter)
    if failed or problems:
        return EXIT_SOME_FAILED
    if not images:
        print("smolvlm-desktop: no images found in the paths given", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def refuse(exc: JobBusy) -> int:
    """Another process runs the job: one line on stderr, and a failure exit code."""
    print(f"smolvlm-desktop: {exc}", file=sys.stderr)
    return EXIT_ERROR


# --- printing ---------------------------------------------------------------------------


class Reporter:
    """Prints results the same way for the plain loop and the batch runner."""

    def __init__(self, args: argparse.Namespace, model: VisionLanguageModel) -> None:
        self.json = args.json
        self.model = model

    def record(self, path: Path, *, ok: bool, text: str | None = None,
               token_ids: list[int] | None = None, error: str | None = None,
               timings: dict | None = None, **extra: object) -> dict:
        """The --json line: the same keys for successes and failures."""
        info = self.model.info
        return {"path": str(path), "ok": ok, "text": text, "token_ids": token_ids, "error": error,
                "model": info.name, "variant": info.variant, "providers": info.providers,
                "timings": timings, **extra}

    def done(self, path: Path, text: str, token_ids: list[int] | None, timings: dict,
             notes: list[str], many: bool, streamed: bool = False) -> None:
        for note in notes:
            print(f"note: {path}: {note}", file=sys.stderr)
        if self.json:
            print_json(self.record(path, ok=True, text=text, token_ids=token_ids, timings=timings))
        elif not streamed:
            print(f"{path}: {text}" if many else text, flush=True)

    def failed(self, path: Path, reason: str) -> None:
        if self.json:
            print_json(self.record(path, ok=False, error=reason))
        else:
            print(f"error: {path}: {reason}", file=sys.stderr)

    def skipped(self, path: Path, reason: str) -> None:
        if self.json:
            print_json(self.record(path, ok=True, skipped=reason))
        else:
            print(f"skipped: {path}: {reason}", file=sys.stderr)


# --- without files: print the answers ------------------------------------------------------


def run_plain(args: argparse.Namespace, model: VisionLanguageModel, images: list[Path],
              prompt: str, settings: GenerationSettings, reporter: Reporter) -> int:
    library = None if args.no_library else open_library_quietly()
    failed = 0
    try:
        for path in images:
            result = caption_one(args, model, path, prompt, settings, reporter, many=len(images) > 1)
            if result is None:
                failed += 1
            elif library is not None:
                library.record_caption(path, result.text, model.info.name, prompt,
                                       result.timings.as_dict())
    finally:
        if library is not None:
            library.close()
    return failed


def caption_one(args: argparse.Namespace, model: VisionLanguageModel, path: Path, prompt: str,
                settings: GenerationSettings, reporter: Reporter, many: bool
                ) -> GenerationResult | None:
    try:
        loaded = load_image(path)
        messages = [Message("user", prompt, images=(loaded.image,))]
        if args.json:
            result = model.generate(messages, settings)
        else:
            if many:
                print(f"{path}: ", end="", flush=True)
            generation = model.stream(messages, settings)
            started = False
            for event in generation:
                text = event.text if started else event.text.lstrip()  # "Assistant:" + " "
                started = started or bool(text)
                print(text, end="", flush=True)
            print(flush=True)
            assert generation.result is not None
            result = generation.result
    except EngineError as exc:
        reporter.failed(path, str(exc))
        return None
    reporter.done(path, result.text.strip(), result.token_ids, result.timings.as_dict(), loaded.notes,
                  many, streamed=not args.json)
    return result


def open_library_quietly():  # type: ignore[no-untyped-def]
    """The library, or None with a note: a broken library must not stop captioning."""
    from ..library.db import Library, LibraryError

    try:
        return Library()
    except (LibraryError, OSError) as exc:
        print(f"note: captions are not recorded in the library: {exc}", file=sys.stderr)
        return None


# --- with files: the batch runner -------------------------------------------------------------


def run_batch(args: argparse.Namespace, model: VisionLanguageModel, images: list[Path],
              prompt: str, settings: GenerationSettings, reporter: Reporter, step=None) -> int:  # type: ignore[no-untyped-def]
    from ..batch import BatchSettings

    batch_settings = BatchSettings(
        prompt=prompt, generation=settings, outputs=tuple(dict.fromkeys(args.write)),
        existing=args.existing, embed_metadata=args.embed_metadata,
        aggregate_dir=args.output_dir.resolve() if args.output_dir else None,
    )
    library = None if args.no_library else open_library_quietly()
    try:
        job_id = resumable_job(library, batch_settings, images, model.info.name)
        if job_id is not None:
            print(f"resuming job #{job_id} where it stopped", file=sys.stderr)
        return drive(model, batch_settings, library, images, job_id, reporter, step)
    finally:
        if library is not None:
            library.close()


def resumable_job(library, settings, images: list[Path], model_name: str) -> int | None:  # type: ignore[no-untyped-def]
    """The newest unfinished job of exactly this command (same settings, model and images).

    If another process is running such a job, JobBusy: the command refuses rather than
    starting a new job. A new job would caption the same images into the same files at the
    same time as the other process, the very clash the claim prevents, and a person who
    typed the command twice wants it done once; when the other run ends (or is killed),
    running the command again resumes or finishes it."""
    if library is None:
        return None
    wanted = {**settings.to_dict(), "model": model_name}
    twins = library.unfinished_jobs_like(wanted, images)
    running = next((job for job in twins if library.job_claimed(job.id)), None)
    if running is not None:
        raise JobBusy(running.id)
    return twins[0].id if twins else None


def drive(model: VisionLanguageModel, settings, library, images: list[Path], job_id: int | None,  # type: ignore[no-untyped-def]
          reporter: Reporter, step=None) -> int:  # type: ignore[no-untyped-def]
    from ..batch import BatchRunner, ImageDone, ImageFailed, ImageSkipped, Progress

    many = True
    show_progress = sys.stderr.isatty() and not reporter.json

    def on_event(event: object) -> None:
        if isinstance(event, ImageDone):
            reporter.done(event.path, event.text, event.token_ids or None,
                          event.timings.as_dict(), event.notes, many)
        elif isinstance(event, ImageFailed):
            reporter.failed(event.path, event.reason)
        elif isinstance(event, ImageSkipped):
            reporter.skipped(event.path, event.reason)
        elif isinstance(event, Progress) and show_progress:
            eta = f", about {event.eta_seconds:.0f} s left" if event.eta_seconds else ""
            print(f"\r{event.done + event.skipped + event.failed}/{event.total}{eta}   ",
                  end="", file=sys.stderr, flush=True)

    runner = BatchRunner(model, settings, library=library, on_event=on_event,
                         model_name=model.info.name, step=step)
    summary = runner.run(images, job_id=job_id)
    if show_progress:
        print(file=sys.stderr)
    if summary.cancelled:
        print("cancelled: run the same command again to finish", file=sys.stderr)
    return len(summary.failed)


def resume_job(args: argparse.Namespace) -> int:
    """`jobs resume N`: the job's own settings, the model given now (or the default)."""
    from ..batch import BatchSettings
    from ..library.db import Library, LibraryError

    try:
        library = Library()
    except LibraryError as exc:
        raise UsageError(str(exc)) from None
    with library:
        try:
            job = library.job(args.job_id)
        except LibraryError as exc:
            raise UsageError(str(exc)) from None
        if not job.unfinished:
            print(f"job #{job.id} is already finished")
            return EXIT_OK
        if library.job_claimed(job.id):  # said before loading a model for nothing
            return refuse(JobBusy(job.id))
        settings = BatchSettings.from_dict(job.settings)
        model = load_model(args)
        args.json = False
        try:
            failed = drive(model, settings, library, [], job.id, Reporter(args, model))
        except JobBusy as exc:  # claimed since the look above
            return refuse(exc)
    return EXIT_SOME_FAILED if failed else EXIT_OK
