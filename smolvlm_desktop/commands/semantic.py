"""`smolvlm-desktop index DIR…` and `smolvlm-desktop search "…" [--image FILE]`: find images
by what they show (an embedding model, docs/CLIP_FORMAT.md) and by what was said about them."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from ..cli import EXIT_OK, EXIT_SOME_FAILED, UsageError
from ..paths import ModelNotFoundError, demo_embedding_model_dir, ort_cache_dir, resolve_embedding_model
from .library import open_library, run_search as run_word_search, snippet_text, wants_bold


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


def run_index(args: argparse.Namespace) -> int:
    from ..library.discover import discover_images
    from ..library.vectors import VectorStore
    from ..semantic import index_images

    try:
        model = load_model(args)
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
    images, problems = discover_images(args.paths, recursive=args.recursive)
    for path, problem in problems:
        print(f"smolvlm-desktop: {path}: {problem}", file=sys.stderr)
    bar = CountBar(sys.stderr)
    cancel = threading.Event()
    with open_library() as library:
        store = VectorStore(library)
        try:
            final = index_images(model, store, images, progress=bar.update, cancel=cancel)
        except KeyboardInterrupt:
            bar.close()
            print("interrupted: the images embedded so far are kept; run the same command to continue",
                  file=sys.stderr)
            return 130
        bar.close()
    for path, reason in final.failures:
        print(f"smolvlm-desktop: {reason}", file=sys.stderr)
    print(f"indexed {final.done - final.failed} images with {model.files.name}, "
          f"{final.skipped} unchanged, {final.failed} failed")
    return EXIT_SOME_FAILED if final.failed or problems else EXIT_OK


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
    with open_library() as library:
        store = VectorStore(library)
        files = load_embedding_files(folder)
        if args.image is None and store.count(f"{files.name}/{files.dim}")[0] == 0:
            return run_word_search(args)  # nothing indexed yet: loading the model gains nothing
        if args.image is not None and not args.image.is_file():
            raise UsageError(f"{args.image}: no such image file")
        matches = search(library, store, load_model(args), args.query, args.image, limit=args.limit)
    bold = wants_bold(sys.stdout)
    for m in matches:
        if args.json:
            print(json.dumps({"path": m.path, "score": round(m.score, 4) if m.by_meaning else None,
                              "rank_score": round(m.rank_score, 6),
                              "text": m.caption, "by_meaning": m.by_meaning, "by_words": m.by_words},
                             ensure_ascii=False))
        else:
            how = "+".join(w for w, on in (("meaning", m.by_meaning), ("words", m.by_words)) if on)
            caption = f"  {snippet_text(m.caption, bold)[:100]}" if m.caption else ""
            score = f"{m.score:.3f}" if m.by_meaning else "-"  # found by its caption alone
            print(f"{m.path}\n    {score} ({how}){caption}")
    if not matches and not args.json:
        print(f"nothing found for {args.query or str(args.image)!r}")
    return EXIT_OK


class CountBar:
    """`[#####.....] 120/1000 images 24.1/s` on a terminal; one line per 10% in a pipe or log."""

    WIDTH = 24

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.reported = -1
        self.drawn = False

    def update(self, p) -> None:  # p: semantic.IndexProgress
        total = max(p.total, 1)
        rate = p.done / max(time.monotonic() - self.started, 1e-6)
        line = f"{p.done}/{p.total} images, {rate:.1f}/s, {p.failed} failed, {p.skipped} unchanged"
        if self.tty:
            filled = int(self.WIDTH * p.done / total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {line}"[:120].ljust(120))
            self.stream.flush()
            self.drawn = True
        elif p.done * 10 // total > self.reported or p.done == p.total:
            self.reported = p.done * 10 // total
            print(f"  {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
