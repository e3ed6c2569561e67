"""`smolvlm-desktop search …`, `library forget …` and `jobs`: the private library, headless.

A library that cannot be used (damaged, read-only, a newer schema) or that refuses a forget
(a running job holds the images) is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .common import EXIT_ERROR, EXIT_OK, UsageError, add_model_options, positive_int
from ..library.db import SNIPPET_END, SNIPPET_START, Library, LibraryError, LibraryUnusable
from ..paths import printable

BOLD, PLAIN = "\x1b[1m", "\x1b[0m"


def add_library_parsers(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="find images by what they show and what was said about them")
    search.add_argument("query", nargs="?", default="",
                        help='words to find, e.g. "red car" (all words must match)')
    search.add_argument("--limit", type=positive_int, default=50, metavar="N",
                        help="show at most N images, best matches first (default 50)")
    search.add_argument("--json", action="store_true", help="one JSON object per hit per line")

    library = sub.add_parser("library", help="what the app remembers about your images")
    lsub = library.add_subparsers(dest="library_command", metavar="ACTION", required=True)
    forget = lsub.add_parser("forget", help="erase images or folders (or everything) from the library")
    forget.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="image files or folders")
    forget.add_argument("--all", action="store_true", help="erase everything")
    forget.add_argument("--yes", action="store_true", help="do not ask before --all")
    lsub.add_parser("where", help="print where the library file is")
    lsub.add_parser("reset", help="keep the library file aside (renamed, not deleted) and start "
                                  "a new, empty one: for a damaged or read-only library")

    jobs = sub.add_parser("jobs", help="batch jobs: list them, or resume one")
    jobs.add_argument("--json", action="store_true", help="one JSON object per job per line")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    resume = jsub.add_parser("resume", help="finish an interrupted batch job")
    resume.add_argument("job_id", type=int, metavar="N", help="the job's number, as `jobs` lists it")
    add_model_options(resume)


def library_to_read() -> Library:
    """The library for a search or a listing: a read-only one is opened for reading (with a
    note that nothing new is recorded), a damaged one is refused (LibraryUnusable)."""
    try:
        return Library()
    except LibraryUnusable as exc:
        if not exc.read_only:
            raise
        print(f"note: {exc}", file=sys.stderr)
        return Library(read_only=True)


def said_on_failure(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A library that cannot be opened or refuses the change: one line, exit status 1."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except LibraryError as exc:  # the message says why and what to do
            print(f"smolvlm-desktop: error: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return wrapper


def wants_bold(stream: object) -> bool:
    """Bold (ANSI) only for a person at a terminal: not in a pipe or file, not with NO_COLOR
    (no-color.org) or TERM=dumb, and on Windows only where the terminal says it is a modern
    one (the old console prints the escape codes as text)."""
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()) or "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    return os.name != "nt" or "WT_SESSION" in os.environ or "TERM" in os.environ


def snippet_text(snippet: str, bold: bool) -> str:
    """A search snippet for the terminal: the match in bold, or (piped, NO_COLOR) the plain
    text with no marks at all, so the caption's own characters, brackets included, come out
    exactly as they are and a script never has to tell marks from text."""
    start, end = (BOLD, PLAIN) if bold else ("", "")
    return snippet.replace(SNIPPET_START, start).replace(SNIPPET_END, end).replace("\n", " ")


@said_on_failure
def run_search(args: argparse.Namespace) -> int:
    with library_to_read() as library:
        hits = library.search(args.query, limit=args.limit)
    bold = wants_bold(sys.stdout)
    for hit in hits:
        if args.json:
            print(json.dumps({"path": printable(hit.path), "kind": hit.kind, "text": hit.text,
                              "model": hit.model, "created_at": hit.created_at},
                             ensure_ascii=False))
        else:
            print(f"{printable(hit.path)}\n    {snippet_text(hit.snippet, bold)}")
    if not hits and not args.json:
        print(f"nothing found for {args.query!r}")
    return EXIT_OK


@said_on_failure
def run_library(args: argparse.Namespace) -> int:
    if args.library_command == "where":
        from ..paths import library_path

        print(library_path())
        return EXIT_OK
    if args.library_command == "reset":
        return reset_library()
    if args.all == bool(args.paths):
        raise UsageError("library forget takes PATH... or --all (not both)")
    if args.all and not args.yes:
        try:
            answer = input("Erase every caption, chat and job from the library? [y/N] ")
        except EOFError:  # no terminal to ask on
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing erased")
            return EXIT_ERROR
    totals: Counter[str] = Counter()
    with Library() as library:
        if args.all:
            totals.update(asdict(library.forget_all()))
        for path in args.paths:
            gone = library.forget_folder(path) if path.is_dir() else library.forget_image(path)
            totals.update(asdict(gone))
    print(f"erased {totals['images']} images, {totals['captions']} captions, "
          f"{totals['chats']} chats, {totals['job_items']} batch entries")
    return EXIT_OK


def reset_library() -> int:
    """Rename the library file (with its WAL and SHM) to library-<time>.sqlite3 beside it; the
    next command starts a new one. Nothing is deleted: the old file can still be rescued."""
    from ..library.db import set_library_aside

    aside = set_library_aside()
    if aside is None:
        print("there is no library file yet; nothing to set aside")
    else:
        print(f"the old library is kept as {aside}; a new, empty library starts with the next command")
    return EXIT_OK


@said_on_failure
def run_jobs(args: argparse.Namespace) -> int:
    if args.jobs_command == "resume":
        from .caption import resume_job

        return resume_job(args)
    with library_to_read() as library:
        jobs = library.list_jobs()
        # the stored "running" is also what a killed run left; the status tells them apart
        status = {job.id: library.job_status(job) for job in jobs}
    for job in jobs:
        c = job.counts
        if args.json:
            print(json.dumps({"id": job.id, "state": status[job.id],
                              "in_use": status[job.id] == "running",
                              "created_at": job.created_at, "counts": c,
                              "prompt": job.settings.get("prompt")}, ensure_ascii=False))
        else:
            state = status[job.id]
            print(f"#{job.id}  {state:<11}  {c.get('done', 0)}/{c.get('total', 0)} done, "
                  f"{c.get('skipped', 0)} skipped, {c.get('failed', 0)} failed  "
                  f"{job.created_at}  {job.settings.get('prompt', '')[:50]!r}")
    if not jobs and not args.json:
        print("no batch jobs yet")
    return EXIT_OK
