"""`smolvlm-desktop index DIR…` and `smolvlm-desktop search "…" [--image FILE]`: find images
by what they show (an embedding model, docs/CLIP_FORMAT.md) and by what was said about them.
Also the pass after a caption batch that makes its images searchable by meaning
(index_after_batch)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from ..paths import (ModelNotFoundError, demo_embedding_model_dir, ort_cache_dir, printable,
                     resolve_embedding_model)
from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, UsageError, print_error
from .library import library_to_read, said_on_failure, snippet_text, wants_bold
from .library import run_search as run_word_search


def add_semantic_parsers(sub: argparse._SubParsersAction) -> None:
    """`index`, and the search-by-meaning options of `search` (whose parser library.py makes)."""
    index = sub.add_parser("index", help="make images searchable by what they show (embeds them)",
                           description="Embed every image under the folders with the embedding model "
                                       "(CLIP) into the private library. Unchanged images (same size and "
                                       "modification time) are skipped, so running it again continues "
                                       "an interrupted run and picks up new or edited files.")
    index.add_argument("paths", nargs="+", type=Path, metavar="DIR", help="folders (or image files)")
    index.add_argument("--recursive", action="store_true", help="look into sub-folders too")
    add_embedding_options(index)
    search = sub.choices["search"]
    search.add_argument("--image", type=Path, metavar="FILE",
                        help="find images that look like this one (more like this)")
    add_embedding_options(search)


def add_embedding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding-model", metavar="NAME",
                   help="installed embedding model, folder, or 'demo' (default: the installed one)")
    p.add_argument("--variant", help="ONNX variant of the embedding model (default: int8 on CPU)")
    p.add_argument("--provider", default="auto", help="auto|cpu|dml|coreml|cuda (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")


def load_model(args: argparse.Namespace):  # -> EmbeddingModel
    from ..engine.embeddings import EmbeddingModel

    folder = resolve_embedding_model(args.embedding_model)
    if folder == demo_embedding_model_dir():
        print("note: the demo embedding model has random weights: its rankings are noise",
              file=sys.stderr)
    return EmbeddingModel.load(folder, variant=args.variant, provider=args.provider,
                               threads=args.threads, cache_dir=ort_cache_dir())


@said_on_failure
def run_index(args: argparse.Namespace) -> int:
    from ..library.discover import discover_images
    from ..library.db import Library
    from ..library.vectors import VectorStore
    from ..semantic import index_images

    try:
        model = load_model(args)
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
    images, problems = discover_images(args.paths, recursive=args.recursive)
    for path, problem in problems:
        print_error(f"{printable(path)}: {problem}")
    cancel = threading.Event()
    with Library() as library, progress_bar(len(images)) as bar:
        store = VectorStore(library)
        try:
            final = index_images(model, store, images, progress=bar.update, cancel=cancel)
        except KeyboardInterrupt:
            bar.close()
            print("interrupted: the images embedded so far are kept; run the same command to continue",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
    for path, reason in final.failures:
        print_error(printable(reason))
    print(f"indexed {final.done - final.failed} images with {model.files.name}, "
          f"{final.skipped} unchanged, {final.failed} failed")
    return EXIT_SOME_FAILED if final.failed or problems else EXIT_OK


@said_on_failure
def run_search(args: argparse.Namespace) -> int:
    """Words and meaning together when an embedding model is installed and images are indexed
    (or --image is given); otherwise exactly the caption-word search."""
    from ..engine.embeddings import load_embedding_files
    from ..library.vectors import VectorStore
    from ..semantic import search

    if not args.query.strip() and args.image is None:
        raise UsageError('search needs words to find, --image FILE, or both')
    try:
        folder = resolve_embedding_model(args.embedding_model)
    except ModelNotFoundError as exc:
        if args.image is not None or args.embedding_model:
            raise UsageError(str(exc)) from None
        return run_word_search(args)
    with library_to_read() as library:
        store = VectorStore(library)
        files = load_embedding_files(folder)
        if args.image is None and store.count(files.key)[0] == 0:
            return run_word_search(args)  # nothing indexed yet: loading the model gains nothing
        if args.image is not None and not args.image.is_file():
            raise UsageError(f"{args.image}: no such image file")
        matches = search(library, store, load_model(args), args.query, args.image, limit=args.limit)
    bold = wants_bold(sys.stdout)
    for m in matches:
        if args.json:
            print(json.dumps({"path": printable(m.path), "score": round(m.score, 4) if m.by_meaning else None,
                              "rank_score": round(m.rank_score, 6),
                              "text": m.caption, "by_meaning": m.by_meaning, "by_words": m.by_words},
                             ensure_ascii=False))
        else:
            how = "+".join(w for w, on in (("meaning", m.by_meaning), ("words", m.by_words)) if on)
            caption = f"  {snippet_text(m.snippet or m.caption, bold)[:100]}" if m.caption else ""
            score = f"{m.score:.3f}" if m.by_meaning else "-"  # found by its caption alone
            print(f"{printable(m.path)}\n    {score} ({how}){caption}")
    if not matches and not args.json:
        print(f"nothing found for {args.query or str(args.image)!r}")
    return EXIT_OK


def index_after_batch(args: argparse.Namespace, library, job_id: int | None) -> None:  # type: ignore[no-untyped-def]
    """After `caption --write` (or `jobs resume`): embed the job's captioned images, as `index`
    would, so that what a batch captioned is found by meaning too.

    Why a pass after the batch, not one image at a time during it: the batch keeps its speed
    and memory (the embedding model is not even loaded while captions are made), an image
    whose caption went into its own XMP (--embed-metadata) is embedded once, after its last
    change, and a command-line user who never opens the window gets them indexed. It costs
    tens of milliseconds an image against seconds for a caption. It is `index`'s own code
    (semantic.index_images), so unchanged images are skipped and an interrupted pass is
    finished by the next batch or `index`.

    It never changes the batch's outcome: no embedding model installed, --no-index or
    --no-library means no pass; a failure or Ctrl+C is one note on stderr. Nothing goes to
    stdout (--json lines stay the batch's alone)."""
    if library is None or job_id is None or getattr(args, "no_index", False):
        return
    try:
        folder = resolve_embedding_model(None)
    except ModelNotFoundError:
        return  # search by meaning is not set up here: nothing to do, nothing to say
    try:
        final, name = _index_job(args, library, job_id, folder)
    except KeyboardInterrupt:
        print("note: indexing for search by meaning stopped; the captions are all done, and "
              "`smolvlm-desktop index` (or the next batch) embeds the rest", file=sys.stderr)
        return
    except Exception as exc:  # noqa: BLE001 - the batch succeeded; this is a note, not a failure
        print(f"note: the captions are done, but indexing them for search by meaning failed "
              f"({exc}); `smolvlm-desktop index` can do it later", file=sys.stderr)
        return
    if final is None:
        return
    for _, reason in final.failures:
        print(f"note: {printable(reason)} (not indexed for search by meaning)", file=sys.stderr)
    if final.total:
        print(f"indexed {final.done - final.failed} images for search by meaning with {name}"
              + (f", {final.skipped} unchanged" if final.skipped else ""), file=sys.stderr)


def _index_job(args: argparse.Namespace, library, job_id: int, folder: Path):  # type: ignore[no-untyped-def]
    """(IndexProgress, model name) of embedding the job's done and skipped images, or (None, "")
    when there is nothing to do: none, all unchanged since embedded (no model is loaded), or a
    cluster run (said in a note)."""
    from ..engine.embeddings import EmbeddingModel, load_embedding_files
    from ..library.vectors import VectorStore
    from ..semantic import index_images

    images = [item.path for item in library.job_items(job_id) if item.state in ("done", "skipped")]
    if images and getattr(args, "cluster", None):  # this machine would embed the cluster's work alone
        print(f"note: to make these {len(images)} images searchable by what they show, run "
              f"`smolvlm-desktop index` on them", file=sys.stderr)
        return None, ""
    store = VectorStore(library)
    if not images or not store.stale(load_embedding_files(folder).key, images):
        return None, ""
    model = EmbeddingModel.load(folder, provider=args.provider, threads=args.threads,
                                cache_dir=ort_cache_dir())
    with progress_bar(len(images)) as bar:
        return index_images(model, store, images, progress=bar.update), model.files.name


class progress_bar:  # noqa: N801 - used as a context manager, like tqdm itself
    """tqdm on stderr for a person at a terminal (the same bar as `caption`); nothing in a
    pipe or a log, where the closing line says what was done."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total or None, unit="image", file=sys.stderr, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def update(self, p) -> None:  # p: semantic.IndexProgress
        self.bar.total = p.total
        self.bar.set_postfix_str(f"{p.failed} failed, {p.skipped} unchanged", refresh=False)
        self.bar.update(p.done - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "progress_bar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
