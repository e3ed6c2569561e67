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
from typing import Callable, TextIO

from .common import (EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, PROG, Stopped, UsageError,
                     interrupt_behind, interrupted_status, json_line, print_error)
from ..engine.images import load_image
from ..engine.model import VisionLanguageModel
from ..engine.types import EngineError, GenerationResult, GenerationSettings, Message
from ..library.joblock import JobBusy
from ..paths import ort_cache_dir, printable, resolve_model
from ..presets import DEFAULT_PRESET, preset_prompt
from .semantic import index_after_batch


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    try:
        return GenerationSettings(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, seed=args.seed, repetition_penalty=args.repetition_penalty,
            detail=args.detail,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def prompt_texts(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt and --preset, in the order given (the default preset if none)."""
    given = getattr(args, "prompts", None) or [("preset", DEFAULT_PRESET)]
    return [value if kind == "prompt" else preset_prompt(value) for kind, value in given]


def load_model(args: argparse.Namespace) -> VisionLanguageModel:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {args.threads}")
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
    prompts = prompt_texts(args)
    images, problems = expand_paths(args)
    if args.embed_metadata and not args.write:
        raise UsageError("--embed-metadata goes with --write")
    if args.write and len(prompts) > 1:
        raise UsageError("--write keeps one caption per image: give one --prompt or --preset "
                         "(several prompts go to the screen or --json)")
    step = None
    if args.cluster:  # the same batch, its captions made on a Ray cluster
        from ..cluster import prepare

        model, step = prepare(args, prompts[0], settings)
    else:
        model = load_model(args)
    reporter = Reporter(args, model)
    for path, reason in problems:
        reporter.failed(path, reason)
    # Each answer is printed with its path whenever more than one image was asked about,
    # even if only one of them could be read: the person must see which one it is.
    many = len(images) + len(problems) > 1 or any(Path(p).is_dir() for p in args.paths)
    if args.write:
        try:
            failed = run_batch(args, model, images, prompts[0], settings, reporter, step)
        except JobBusy as exc:
            return refuse(exc)
    else:
        failed = run_plain(args, model, images, prompts, settings, reporter, many)
    if failed or problems:
        return EXIT_SOME_FAILED
    if not images:
        print_error("no images found in the paths given")
        return EXIT_ERROR
    return EXIT_OK


def refuse(exc: JobBusy) -> int:
    """Another process runs the job: one line on stderr, and a failure exit code."""
    print_error(str(exc))
    return EXIT_ERROR


# --- printing ---------------------------------------------------------------------------


def without_file_name(path: Path, reason: str) -> str:
    """The engine's reasons start with the file's name (the window shows them alone); beside
    the full path that name would be said twice (`img/a.jpg: a.jpg: not an image`)."""
    return reason.removeprefix(f"{path.name}: ")


class Reporter:
    """Prints results the same way for the plain loop and the batch runner.

    Every line goes through `write`, which a progress bar replaces with its own (tqdm.write)
    so that a result or an error never lands in the middle of the bar's line."""

    def __init__(self, args: argparse.Namespace, model: VisionLanguageModel) -> None:
        self.json = args.json
        self.model = model
        self.write: Callable[[str, TextIO], None] = lambda text, stream: print(text, file=stream, flush=True)

    def record(self, path: Path, *, ok: bool, text: str | None = None,
               token_ids: list[int] | None = None, error: str | None = None,
               timings: dict | None = None, **extra: object) -> dict:
        """The --json line: the same keys for successes and failures."""
        info = self.model.info
        error = printable(error) if error is not None else None  # it may quote an odd file name
        return {"path": printable(path), "ok": ok, "text": text, "token_ids": token_ids, "error": error,
                "model": info.name, "variant": info.variant, "providers": info.providers,
                "timings": timings, **extra}

    def done(self, path: Path, text: str, token_ids: list[int] | None, timings: dict,
             notes: list[str], many: bool, streamed: bool = False, prompt: str | None = None) -> None:
        for note in notes:
            self.write(f"note: {printable(path)}: {note}", sys.stderr)
        if self.json:
            self.write(json_line(self.record(path, ok=True, text=text, token_ids=token_ids, timings=timings,
                                             prompt=prompt)), sys.stdout)
        elif not streamed:
            self.write(f"{printable(path)}: {text}" if many else text, sys.stdout)

    def failed(self, path: Path, reason: str, prompt: str | None = None) -> None:
        reason = without_file_name(path, reason)
        if self.json:
            self.write(json_line(self.record(path, ok=False, error=reason, prompt=prompt)), sys.stdout)
        else:
            self.write(f"{PROG}: error: {printable(path)}: {printable(reason)}", sys.stderr)

    def skipped(self, path: Path, reason: str) -> None:
        if self.json:
            self.write(json_line(self.record(path, ok=True, skipped=printable(reason))), sys.stdout)
        else:
            self.write(f"skipped: {printable(path)}: {printable(reason)}", sys.stderr)


# --- without files: print the answers ------------------------------------------------------


def run_plain(args: argparse.Namespace, model: VisionLanguageModel, images: list[Path],
              prompts: list[str], settings: GenerationSettings, reporter: Reporter, many: bool) -> int:
    library = None if args.no_library else open_library_quietly()
    failed = 0
    try:
        for path in images:
            for prompt, result in caption_one(args, model, path, prompts, settings, reporter,
                                              many=many):
                if result is None:
                    failed += 1
                elif library is not None:
                    library.record_caption(path, result.text, model.info.name, prompt,
                                           result.timings.as_dict())
    finally:
        if library is not None:
            library.close()
    return failed


def caption_one(args: argparse.Namespace, model: VisionLanguageModel, path: Path, prompts: list[str],
                settings: GenerationSettings, reporter: Reporter, many: bool
                ) -> list[tuple[str, GenerationResult | None]]:
    """Each prompt's answer about one image. The image is read once: the prompts share one
    Conversation, so each later prompt reads only its own tokens, and each answer is the one
    the prompt would get alone."""
    try:
        loaded = load_image(path)
    except EngineError as exc:
        reporter.failed(path, str(exc))
        return [(prompt, None) for prompt in prompts]
    chat = model.conversation()
    several = len(prompts) > 1
    out: list[tuple[str, GenerationResult | None]] = []
    for prompt in prompts:
        try:
            result = answer(args, chat, [Message("user", prompt, images=(loaded.image,))], settings,
                            f"{printable(path)} [{prompt}]: " if several
                            else f"{printable(path)}: " if many else "")
        except EngineError as exc:
            reporter.failed(path, str(exc), prompt=prompt if several else None)
            out.append((prompt, None))
            continue
        reporter.done(path, result.text.strip(), result.token_ids, result.timings.as_dict(),
                      loaded.notes if not out else [], many or several, streamed=not args.json,
                      prompt=prompt)
        out.append((prompt, result))
    return out


def answer(args: argparse.Namespace, chat, messages: list[Message], settings: GenerationSettings,  # type: ignore[no-untyped-def]
           heading: str) -> GenerationResult:
    """One answer: printed as it streams (after `heading`), or quietly for --json."""
    if args.json:
        return chat.generate(messages, settings)
    if heading:
        print(heading, end="", flush=True)
    generation = chat.stream(messages, settings)
    started = False
    try:
        for event in generation:
            text = event.text if started else event.text.lstrip()  # "Assistant:" + " "
            started = started or bool(text)
            print(text, end="", flush=True)
    finally:
        print(flush=True)  # Ctrl+C too: a half caption still ends its line
    assert generation.result is not None
    return generation.result


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
        return drive(model, batch_settings, library, images, job_id, reporter, step=step,
                     then=lambda job: index_after_batch(args, library, job))
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
          reporter: Reporter, resume_hint: str = "run the same command again to resume",
          step=None, then: Callable[[int | None], None] | None = None) -> int:  # type: ignore[no-untyped-def]
    """Run the batch with a progress bar; `then(job_id)` runs after it (the index pass)."""
    from ..batch import BatchRunner, ImageDone, ImageFailed, ImageSkipped, LibraryStopped, Progress
    from ..library.db import RESET_HINT

    many = True
    bar = progress_bar(reporter, len(images))

    def on_event(event: object) -> None:
        if isinstance(event, ImageDone):
            reporter.done(event.path, event.text, event.token_ids or None,
                          event.timings.as_dict(), event.notes, many)
        elif isinstance(event, ImageFailed):
            reporter.failed(event.path, event.reason)
        elif isinstance(event, ImageSkipped):
            reporter.skipped(event.path, event.reason)
        elif isinstance(event, LibraryStopped):
            reporter.write(f"note: the library stopped working ({event.reason}); captions are "
                           f"still written but no longer recorded in it. If it stays so, "
                           f"{RESET_HINT}.", sys.stderr)
        elif isinstance(event, Progress) and bar is not None:
            bar.set_postfix_str(rate_and_eta(event), refresh=False)
            bar.total = event.total
            bar.update(event.done + event.skipped + event.failed - bar.n)

    runner = BatchRunner(model, settings, library=library, on_event=on_event,
                         model_name=model.info.name, step=step)
    try:
        summary = runner.run(images, job_id=job_id)
    except BaseException as exc:  # Ctrl+C or SIGTERM: what is done is saved, the rest resumes
        interrupt = interrupt_behind(exc)
        if interrupt is None:
            raise
        if bar is not None:
            bar.close()
            bar = None
        print(f"interrupted: {resume_hint}", file=sys.stderr)
        raise Stopped(interrupted_status(interrupt)) from None
    finally:
        if bar is not None:
            bar.close()
    if summary.cancelled:
        print("cancelled: run the same command again to finish", file=sys.stderr)
    elif then is not None:
        then(summary.job_id)
    return len(summary.failed)


def rate_and_eta(progress) -> str:  # type: ignore[no-untyped-def]
    """The bar's rate and time left, from the runner's own figures: they leave skipped images
    out, tqdm's would not; on a cluster the rate is the whole cluster's (see BatchRunner)."""
    parts = []
    per_image = progress.seconds_per_image
    if per_image:
        parts.append(f"{1 / per_image:.2f} images/s" if per_image <= 1 else f"{per_image:.1f} s/image")
    if progress.eta_seconds:
        parts.append(f"about {progress.eta_seconds:.0f} s left")
    return ", ".join(parts)


def progress_bar(reporter: Reporter, total: int):  # -> tqdm | None
    """A progress bar on stderr for a person at a terminal (none in a pipe, a log or with
    --json). While it shows, the reporter prints through tqdm.write, which takes the bar off
    the screen, prints the line and puts the bar back: results on stdout stay whole lines."""
    if reporter.json or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=total or None, unit="image", file=sys.stderr, dynamic_ncols=True, leave=True,
               bar_format="{n_fmt}/{total_fmt} {bar} {elapsed}{postfix}")
    reporter.write = lambda text, stream: tqdm.write(text, file=stream)
    return bar


def resume_job(args: argparse.Namespace) -> int:
    """`jobs resume N`: the job's own settings, the model given now (or the default).

    Exit status 4 while any image of the job is failed (this run's or an earlier one's): the
    job is not all done, whatever this run did. A library that cannot be opened is a
    LibraryError, said by the `jobs` command."""
    from ..batch import BatchSettings
    from ..library.db import Library, LibraryError

    with Library() as library:
        try:
            job = library.job(args.job_id)
        except LibraryError as exc:
            raise UsageError(str(exc)) from None
        if not job.unfinished:
            failed = job.counts.get("failed", 0)
            print(f"job #{job.id} is already finished"
                  + (f"; {failed} image{'s' if failed != 1 else ''} failed" if failed else ""))
            return EXIT_SOME_FAILED if failed else EXIT_OK
        if library.job_claimed(job.id):  # said before loading a model for nothing
            return refuse(JobBusy(job.id))
        settings = BatchSettings.from_dict(job.settings)
        model = load_model(args)
        args.json = False
        try:
            failed = drive(model, settings, library, [], job.id, Reporter(args, model),
                           resume_hint=f"run `smolvlm-desktop jobs resume {job.id}` again to go on",
                           then=lambda job_id: index_after_batch(args, library, job_id))
        except JobBusy as exc:  # claimed since the look above
            return refuse(exc)
        failed += library.job(job.id).counts.get("failed", 0)
    return EXIT_SOME_FAILED if failed else EXIT_OK
