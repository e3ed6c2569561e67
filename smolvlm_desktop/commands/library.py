"""`smolvlm-desktop search …`, `library forget …` and `jobs`: the private library, headless."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..cli import EXIT_ERROR, EXIT_OK, UsageError, add_model_options
from ..library.db import SNIPPET_END, SNIPPET_START, Library, LibraryError

BOLD, PLAIN = "\x1b[1m", "\x1b[0m"


def add_library_parsers(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="find images by what they show and what was said about them")
    search.add_argument("query", nargs="?", default="",
                        help='words to find, e.g. "red car" (all words must match)')
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--json", action="store_true", help="one JSON object per hit per line")

    library = sub.add_parser("library", help="what the app remembers about your images")
    lsub = library.add_subparsers(dest="library_command", metavar="ACTION", required=True)
    forget = lsub.add_parser("forget", help="erase images or folders (or everything) from the library")
    forget.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="image files or folders")
    forget.add_argument("--all", action="store_true", help="erase everything")
    forget.add_argument("--yes", action="store_true", help="do not ask before --all")
    lsub.add_parser("where", help="print where the library file is")

    jobs = sub.add_parser("jobs", help="batch jobs: list them, or resume one")
    jobs.add_argument("--json", action="store_true")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    resume = jsub.add_parser("resume", help="finish an interrupted batch job")
    resume.add_argument("job_id", type=int)
    add_model_options(resume)


def open_library() -> Library:
    try:
        return Library()
    except LibraryError as exc:
        raise UsageError(str(exc)) from None


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


def run_search(args: argparse.Namespace) -> int:
    with open_library() as library:
        hits = library.search(args.query, limit=args.limit)
    bold = wants_bold(sys.stdout)
    for hit in hits:
        if args.json:
            print(json.dumps({"path": hit.path, "kind": hit.kind, "text": hit.text,
                              "model": hit.model, "created_at": hit.created_at},
                             ensure_ascii=False))
        else:
            print(f"{hit.path}\n    {snippet_text(hit.snippet, bold)}")
    if not hits and not args.json:
        print(f"nothing found for {args.query!r}")
    return EXIT_OK


def run_library(args: argparse.Namespace) -> int:
    if args.library_command == "where":
        from ..paths import library_path

        print(library_path())
        return EXIT_OK
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
    with open_library() as library:
        if args.all:
            totals.update(asdict(library.forget_all()))
        for path in args.paths:
            gone = library.forget_folder(path) if path.is_dir() else library.forget_image(path)
            totals.update(asdict(gone))
    print(f"erased {totals['images']} images, {totals['captions']} captions, "
          f"{totals['chats']} chats, {totals['job_items']} batch entries")
    return EXIT_OK


def run_jobs(args: argparse.Namespace) -> int:
    if args.jobs_command == "resume":
        from .caption import resume_job

        return resume_job(args)
    with open_library() as library:
        jobs = library.list_jobs()
        # "running" is also what a crashed job says; "in use" is one a live process runs now
        in_use = {job.id for job in jobs if job.unfinished and library.job_claimed(job.id)}
    for job in jobs:
        c = job.counts
        if args.json:
            print(json.dumps({"id": job.id, "state": job.state, "in_use": job.id in in_use,
                              "created_at": job.created_at, "counts": c,
                              "prompt": job.settings.get("prompt")}, ensure_ascii=False))
        else:
            state = "in use" if job.id in in_use else job.state
            print(f"#{job.id}  {state:<9}  {c.get('done', 0)}/{c.get('total', 0)} done, "
                  f"{c.get('skipped', 0)} skipped, {c.get('failed', 0)} failed  "
                  f"{job.created_at}  {job.settings.get('prompt', '')[:50]!r}")
    if not jobs and not args.json:
        print("no batch jobs yet")
    return EXIT_OK
