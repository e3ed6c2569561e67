"""`smolvlm-desktop models …`: the models on this machine, and getting more.

Every expected failure (no network, unknown name, corrupt download, bad folder) is one line on
stderr and exit status 1 (2 for a name that is not in the catalog), never a traceback. Only
`pull` and `build` touch the network; see hub.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Callable, TextIO, TypeVar

from .. import hub, paths
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, print_error
from ..hub import PullProgress
from ..paths import installed_models

T = TypeVar("T")


def run_models(args: argparse.Namespace) -> int:
    actions = {"list": lambda: list_models(), "pull": lambda: pull(args), "import": lambda: import_(args),
               "verify": lambda: verify(args.name), "remove": lambda: remove(args.name),
               "default": lambda: set_default(args.name), "export": lambda: export(args),
               "build": lambda: build(args)}
    try:
        return actions[args.models_command]()
    except hub.UnknownModelError as exc:
        print_error(str(exc))
        return EXIT_USAGE
    except hub.HubError as exc:
        print_error(str(exc))
        return EXIT_ERROR


def list_models() -> int:
    from ..engine.families import SMOLVLM  # here: the engine's imports (numpy, Pillow) only when listing

    for row in hub.list_models():
        mark = "*" if row.is_default else " "
        details = [row.state] + (["embedding"] if row.kind == "embedding" else [])
        if row.family and row.family != SMOLVLM.name:  # the app's first family needs no label
            details.append(row.family)
        if row.variants and row.state == "installed":
            details.append(",".join(row.variants))
        if row.size_bytes:
            details.append(human_size(row.size_bytes))
        where = str(row.folder) if row.folder else (row.repo or "")
        print(f"{mark} {row.name:<30} {' '.join(details):<28} {where}")
        if row.summary and row.state != "installed":
            print(f"  {'':<30} {row.summary}")
        if row.licence and row.state != "installed":
            asks = " (asks before the first download: --accept-licence)" if row.ask_before_download else ""
            print(f"  {'':<30} licence: {row.licence}{asks}")
    return EXIT_OK


def download(fetch: Callable[[Callable[[PullProgress], None]], T]) -> T | None:
    """Run `fetch(progress)` under a progress bar; None if Ctrl+C stopped it (said on stderr)."""
    bar = ProgressBar(sys.stderr)
    try:
        return fetch(bar.update)
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: what was downloaded is kept; run the same command to resume", file=sys.stderr)
        return None
    finally:
        bar.close()


def pull(args: argparse.Namespace) -> int:
    folder = download(lambda progress: hub.pull(args.name, variant=args.variant, progress=progress,
                                                revision=args.revision, official=args.official,
                                                accept_licence=args.accept_licence))
    if folder is None:
        return EXIT_INTERRUPTED
    manifest = hub.read_manifest(folder) or {}
    how = ", built here from its weights" if manifest.get("source") == "built" else ""
    variant = args.variant or hub.default_variant(hub.catalog_entry(args.name).kind)
    print(f"installed {args.name} ({variant}{how}) in {folder}")
    return EXIT_OK


def import_(args: argparse.Namespace) -> int:
    bar = ProgressBar(sys.stderr)
    try:
        folder = hub.import_folder(args.src, name=args.name, copy=not args.move, progress=bar.update)
    finally:
        bar.close()
    print(f"imported {args.src} as {folder.name} ({folder})")
    return EXIT_OK


def verify(name: str | None) -> int:
    names = [name] if name else [p.name for p in installed_models(kind=None)]
    if not names:
        print("no models are installed")
        return EXIT_OK
    failed = 0
    for model in names:
        problems = hub.verify(model)
        print(f"{model}: {'ok' if not problems else 'PROBLEMS'}")
        for problem in problems:
            print(f"  {problem}")
        failed += bool(problems)
    if failed:
        print_error(f"{failed} model(s) failed verification; `models pull` or `models import` them again")
        return EXIT_ERROR
    return EXIT_OK


def remove(name: str) -> int:
    hub.remove(name)
    print(f"removed {name}")
    return EXIT_OK


def set_default(name: str) -> int:
    if hub.set_default(name) == "embedding":
        print(f"search by meaning uses {name} from now on; images indexed with another model are "
              f"found by meaning again once `smolvlm-desktop index` has embedded them with this one")
    else:
        print(f"default model: {name}")
    return EXIT_OK


def export(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    export_checkpoint(args.src, args.dst, quantize=tuple(args.quantize or ["int8"]))
    print(f"exported to {args.dst}")
    return EXIT_OK


def build(args: argparse.Namespace) -> int:
    """Download a catalog model's PyTorch weights and export them here with this app's
    exporter: graphs with fused ops whose decoder writes its cache in place and decodes
    batches of images together, which the official ONNX files do not (README: speed)."""
    from ..export import export_checkpoint, require_export_extra

    require_export_extra()  # said before a download of hundreds of MB, not after
    entry = hub.catalog_entry(args.name)
    name = args.as_name or f"{entry.name}-built"
    if (paths.models_dir() / name).exists():
        raise hub.HubError(f"a model named {name!r} is already installed; remove it first or choose "
                           "another name with --as")
    fetched = download(lambda progress: hub.pull_weights(entry.name, progress=progress, revision=args.revision))
    if fetched is None:
        return EXIT_INTERRUPTED
    weights, commit = fetched
    print(f"exporting {entry.name} (checked against transformers; a few minutes)", file=sys.stderr)
    out = weights.with_name(f"{weights.name}.onnx")
    shutil.rmtree(out, ignore_errors=True)
    try:
        export_checkpoint(weights, out, quantize=("int8",))
        folder = hub.install_built(out, name, entry.repo, commit)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(weights, ignore_errors=True)  # kept above for a retry; installed now
    print(f"built {name} in {folder}")
    return EXIT_OK


class ProgressBar:
    """A one-line bar on a terminal; on a pipe or log, one line per finished file instead."""

    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.drawn = False
        self.files_reported = 0

    def update(self, p: PullProgress) -> None:
        if p.stage == "build":
            self._build_step(p)
        elif self.tty:
            self._draw(p)
        elif p.files_done > self.files_reported:
            self.files_reported = p.files_done
            print(f"  [{p.files_done}/{p.files_total}] {p.file} ({human_size(p.file_total)})",
                  file=self.stream, flush=True)

    def _build_step(self, p: PullProgress) -> None:
        """Building the graphs: steps, not bytes."""
        self.close()  # the download's bar, if one is drawn
        print(f"  building [{p.done}/{p.total}] {p.file}", file=self.stream, flush=True)

    def _draw(self, p: PullProgress) -> None:
        done, total = p.done, max(p.total, 1)
        filled = int(self.WIDTH * done / total)
        rate = done / max(time.monotonic() - self.started, 1e-6)
        line = (f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * done / total:5.1f}% "
                f"{human_size(done)}/{human_size(total)} {human_size(rate)}/s  {p.file}")
        self.stream.write(line[:120].ljust(120))
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def human_size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"
