"""The model manager: which SmolVLM models exist, which are on this computer, and getting them here.

This is the only module of the app that opens a network connection, and only inside `pull`, which
runs when the user asks for a download. Everything else here (`list_models`, `verify`,
`import_folder`, `remove`, `set_default`) works on local files and never imports
huggingface_hub at all.

**Offline by default.** `smolvlm_desktop/__init__.py` sets `HF_HUB_OFFLINE=1` before anything can
import huggingface_hub, which reads that variable once, at import time, into
`huggingface_hub.constants.HF_HUB_OFFLINE`; every request it makes checks that constant first.
`pull` flips the constant to False only while its own calls run (`_hub_online`) and puts the old
value back afterwards, even on error or cancel. It also passes the endpoint explicitly (read from
`HF_ENDPOINT` at call time, not import time) and sends no token: the SmolVLM repos are public.

**Why not `hf_hub_download`?** In huggingface_hub 2.x it deletes a partial file when a download
fails, so a cancelled or interrupted 1.7 GB download would start again from zero, and it offers no
way to cancel from another thread. So `pull` uses huggingface_hub for what it is good at (repo
metadata: the commit a revision resolves to, sizes, LFS sha256; the Hub's URLs; its HTTP client
and error types) and streams each file itself: into `.partial/NAME/FILE.part`, resumed with an
HTTP Range request, hashed on the fly, checked against what the Hub reports, and only then
installed. The cancel flag is checked between chunks, so the window can stop a download at once.

Files on disk:

    models/NAME/                 an installed model, with manifest.json (what was installed from
                                 where: repo, resolved commit, every file's size and sha256)
    models/.partial/NAME/        a download in progress; `pull` resumes it, `remove` deletes it
    models/.partial/.import-NAME-xxxxxxxx/(.lock)
                                 an import's copy in progress, held under an OS lock: a killed
                                 import's copy is removed by the next `models` command
    models/.partial/NAME.weights/  the weights a pull builds the graphs from (and, in build/,
                                 the graphs being written); kept until the model is installed
    models/default.txt           the default model's name (`set_default`)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import paths
from .oslock import is_current, try_lock

CATALOG_PATH = Path(__file__).resolve().parent / "data" / "catalog.json"
MANIFEST_NAME = "manifest.json"
PARTIAL_DIR_NAME = ".partial"
IMPORT_PREFIX = ".import-"  # .partial/.import-NAME-xxxxxxxx: an import's copy, with a .lock beside it
TRASH_PREFIX = ".old-"  # .partial/.old-NAME-xxxxxxxx: a replaced model on its way out
WEIGHTS_SUFFIX = ".weights"  # .partial/NAME.weights: the weights a pull or `models build` builds from
BUILD_DIR_NAME = "build"  # .partial/NAME.weights/build: the graphs being written from them
BUILT_VARIANTS = ("fp32", "int8")  # what a pull that builds writes (export.build)
# A pull builds only from weights up to this size: SmolVLM-256M's are 0.5 GB, 500M's 1 GB (bf16);
# the 2.2B's 4.5 GB would make graphs too big for one ONNX file (export.build.MAX_GRAPH_BYTES),
# so it gets the official files.
MAX_BUILD_WEIGHTS_BYTES = 3_000_000_000
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_VARIANT = "int8"
# Embedding models come as Xenova's 8-bit `_quantized` files (CLIP and SigLIP alike, confirmed
# from public material: docs/CLIP_FORMAT.md); `_int8` is not confirmed for either.
EMBEDDING_VARIANT = "quantized"
CHUNK_RETRIES = 3  # reconnects per file after the connection drops mid-body
PROGRESS_INTERVAL_S = 0.1
MANIFEST_SCHEMA = 1
COPY_CHUNK = 4 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Errors: every one carries a message meant for the user.


class HubError(Exception):
    """A model-manager failure the user can act on; the message says what happened and what to do."""


class UnknownModelError(HubError, LookupError):
    """The name is not in the catalog (the message lists the names that are)."""


class NotInstalledError(HubError, LookupError):
    """The name is not an installed model."""


class HubUnreachableError(HubError):
    """No connection to the Hugging Face Hub (offline, firewall, proxy, DNS...)."""


class ChecksumError(HubError):
    """A downloaded file does not match the checksum the Hub reports for it."""


class LicenceNotAccepted(HubError):
    """The model's licence asks for the user's consent before the first download."""


def licence_question(entry: "CatalogEntry") -> str:
    """What the user is asked before the first download of a model under such a licence."""
    return (f"{entry.name} is published under the {entry.licence} licence, not an open-source one: "
            f"read it at {entry.licence_url} before using the model. Nothing of it ships with this app.")


class PullCancelled(HubError):
    """The user cancelled a pull; what was downloaded is kept and the next pull resumes it."""


# --------------------------------------------------------------------------------------------
# The catalog of known releases (smolvlm_desktop/data/catalog.json; see models/README.md).


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    repo: str
    revision: str | None  # a pinned commit, or None for "main at the time of the pull"
    summary: str
    onnx: bool  # False: no ONNX release exists (pull refuses and says what to do instead)
    variants: tuple[str, ...] | None  # None: not confirmed from public material; the Hub decides
    known_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    common_files: tuple[str, ...] = ()
    optional_files: tuple[str, ...] = ()
    kind: str = paths.CHAT  # or paths.EMBEDDING: a CLIP-style model for search by meaning
    licence: str = ""  # the Hub's licence id, e.g. "apple-amlr"
    licence_url: str = ""
    ask_before_download: bool = False  # a licence the user must accept before the first download
    # Variants pulled with the release's fp32 vision graph instead of their own, which would be
    # slower on a CPU (engine/files.py VISION_GRAPH: FastVLM's _int8 one is ConvInteger).
    fp32_vision_for: tuple[str, ...] = ()

    def graph_files(self, variant: str) -> list[str]:
        """The ONNX graphs of one variant, named as the official release names them."""
        from .engine.files import VARIANT_SUFFIXES, VISION_GRAPH, expected_files

        if variant not in VARIANT_SUFFIXES:
            raise HubError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANT_SUFFIXES)}")
        if self.kind == paths.EMBEDDING:
            from .engine.embeddings import GRAPHS

            return [f"onnx/{g}{VARIANT_SUFFIXES[variant]}.onnx" for g in GRAPHS]
        files = expected_files(variant)
        if variant not in self.fp32_vision_for:
            return files
        vision = f"onnx/{VISION_GRAPH}{VARIANT_SUFFIXES[variant]}.onnx"
        return [f"onnx/{VISION_GRAPH}.onnx" if f == vision else f for f in files]


def load_catalog(path: Path | None = None) -> list[CatalogEntry]:
    """Read the catalog shipped with the app (or another file with the same layout)."""
    raw = json.loads((path or CATALOG_PATH).read_text(encoding="utf-8"))
    common = tuple(raw.get("common_files", ()))
    optional = tuple(raw.get("optional_files", ()))
    return [
        CatalogEntry(
            name=m["name"], repo=m["repo"], revision=m.get("revision"), summary=m.get("summary", ""),
            onnx=bool(m.get("onnx", True)),
            variants=tuple(m["variants"]) if m.get("variants") is not None else None,
            known_files=dict(m.get("known_files") or {}), common_files=common, optional_files=optional,
            kind=m.get("kind", paths.CHAT),
            licence=m.get("licence", ""), licence_url=m.get("licence_url", ""),
            ask_before_download=bool(m.get("ask_before_download", False)),
            fp32_vision_for=tuple(m.get("fp32_vision_for", ())),
        )
        for m in raw["models"]
    ]


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry called `name` (case-insensitive), or an error that lists the known names."""
    catalog = load_catalog()
    for entry in catalog:
        if entry.name.lower() == name.lower():
            return entry
    names = ", ".join(e.name for e in catalog if e.onnx)
    raise UnknownModelError(f"{name!r} is not a model the app knows how to pull. Known models: {names}")


# --------------------------------------------------------------------------------------------
# Progress reports for the CLI bar and the window's worker thread.


@dataclass(frozen=True)
class PullProgress:
    """Where a pull is. Sent from the thread that runs `pull`: a GUI must hand it to its own thread."""

    file: str  # the file being downloaded, relative to the model folder
    file_done: int  # bytes of that file on disk
    file_total: int
    done: int  # bytes of all files on disk
    total: int
    files_done: int
    files_total: int
    # "download", or "build": the graphs being written from the downloaded weights, where
    # done/total count steps (graphs written, then quantised) and `file` says which.
    stage: str = "download"


ProgressCallback = Callable[[PullProgress], None]


@dataclass
class _Tracker:
    """Counts bytes across files and calls the user's callback at most every PROGRESS_INTERVAL_S."""

    callback: ProgressCallback | None
    total: int
    files_total: int
    done: int = 0
    files_done: int = 0
    file: str = ""
    file_done: int = 0
    file_total: int = 0
    _last: float = 0.0

    def start_file(self, name: str, size: int) -> None:
        self.file, self.file_done, self.file_total = name, 0, size
        self._report(force=True)

    def add(self, nbytes: int) -> None:
        self.file_done += nbytes
        self.done += nbytes
        self._report(force=False)

    def rewind(self, nbytes: int) -> None:
        """The server ignored a Range request: the kept bytes are thrown away and fetched again."""
        self.file_done -= nbytes
        self.done -= nbytes

    def finish_file(self) -> None:
        self.files_done += 1
        self._report(force=True)

    def _report(self, force: bool) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last < PROGRESS_INTERVAL_S):
            return
        self._last = now
        self.callback(PullProgress(self.file, self.file_done, self.file_total, self.done, self.total,
                                   self.files_done, self.files_total))


# --------------------------------------------------------------------------------------------
# Talking to the Hub (pull only).

_online_lock = threading.Lock()
_online_users = 0
_saved_flags: tuple[bool, bool] = (True, True)


@contextmanager
def _hub_online() -> Iterator[None]:
    """Let huggingface_hub reach the network while the block runs, then restore offline mode.

    huggingface_hub checks `constants.HF_HUB_OFFLINE` before every request; the package sets it
    (through the HF_HUB_OFFLINE variable) at import. A counter lets two pulls overlap safely.
    Telemetry and its user-agent probes stay off while online.
    """
    global _online_users, _saved_flags
    from huggingface_hub import constants

    with _online_lock:
        if _online_users == 0:
            _saved_flags = (constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_TELEMETRY)
            constants.HF_HUB_OFFLINE = False
            constants.HF_HUB_DISABLE_TELEMETRY = True
        _online_users += 1
    try:
        yield
    finally:
        with _online_lock:
            _online_users -= 1
            if _online_users == 0:
                constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_TELEMETRY = _saved_flags


def hub_endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once at import), else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@contextmanager
def _reaching_hub(endpoint: str, what: str) -> Iterator[None]:
    """Turn failures to talk to the Hub into one message, without a traceback.

    Only wraps the calls that open a connection. Offline machines, proxies, TLS stacks, VPNs and
    sandboxes that patch sockets fail in many ways, not all of them OSError; inside these calls
    any of them means the same to the user: the Hub could not be reached.
    """
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except HubError:
        raise
    except RevisionNotFoundError as exc:
        raise HubError(f"{what}: the Hub has no such revision ({_first_line(exc)})") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{what}: the Hub has no such repository ({_first_line(exc)})") from exc
    except HfHubHTTPError as exc:
        raise HubError(f"{what}: the Hugging Face Hub answered with an error: {_first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - see docstring
        raise HubUnreachableError(
            f"cannot reach the Hugging Face Hub at {endpoint}: {_describe(exc)}. Check the network "
            "connection (or copy a model folder from another computer and use `models import`)."
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def _describe(exc: BaseException) -> str:
    text = _first_line(exc)
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch, with what the Hub says about it at the resolved commit."""

    path: str
    size: int
    sha256: str | None  # LFS files: the Hub's sha256 of the content
    git_blob: str | None  # small files kept in git: the Hub's git blob id (sha1 of "blob N\\0" + bytes)


def _plan(entry: CatalogEntry, variant: str, info: Any) -> list[RemoteFile]:
    """The files one variant needs, with the Hub's size and checksum for each; refuse gaps."""
    by_name = {s.rfilename: s for s in info.siblings or []}
    graphs = entry.graph_files(variant)
    missing = [f for f in [*entry.common_files, *graphs] if f not in by_name]
    if missing:
        raise HubError(
            f"{entry.repo} at {info.sha} has no {', '.join(missing)}; it does not hold a complete "
            f"{variant} release. Try another --variant.")
    wanted = [*entry.common_files, *(f for f in entry.optional_files if f in by_name), *graphs]
    # Graphs over 2 GB keep their weights next to them (decoder_model_merged.onnx_data, ..._1, ...).
    wanted += sorted(n for n in by_name for g in graphs if n.startswith(g + "_data"))
    return [_remote_file(entry, by_name[name]) for name in wanted]


def _remote_file(entry: CatalogEntry, sibling: Any) -> RemoteFile:
    name = sibling.rfilename
    sha256 = sibling.lfs.sha256 if sibling.lfs else None
    if sibling.size is None or (sha256 is None and sibling.blob_id is None):
        raise HubError(f"the Hub reported no size or checksum for {name}; refusing to download it unchecked")
    pinned = (entry.known_files.get(name) or {}).get("sha256")
    if pinned and sha256 and pinned != sha256:
        raise ChecksumError(
            f"the Hub reports sha256 {sha256} for {name} of {entry.repo}, but the app's catalog pins "
            f"{pinned}. Refusing to download it.")
    return RemoteFile(name, int(sibling.size), sha256, None if sha256 else sibling.blob_id)


# --------------------------------------------------------------------------------------------
# pull


def default_variant(kind: str) -> str:
    """What `pull` (and the model manager's Download) fetches when no variant is asked for."""
    return EMBEDDING_VARIANT if kind == paths.EMBEDDING else DEFAULT_VARIANT


def pull(name: str, variant: str | None = None, progress: ProgressCallback | None = None,
         cancel: threading.Event | None = None, *, revision: str | None = None, official: bool = False,
         accept_licence: bool = False) -> Path:
    """Get a catalog model into `paths.models_dir()/NAME` and return that folder.

    When the release has its weights (model.safetensors, up to MAX_BUILD_WEIGHTS_BYTES) and
    `variant` is one the app builds (BUILT_VARIANTS), those are downloaded and this app's graphs
    are built from them here (`_build_and_install`): faster than the official ONNX files, and no
    torch needed. Otherwise, or with official=True, the official ONNX files of `variant` are
    downloaded.

    Resumes what an earlier, interrupted pull left behind; checks every file against the size and
    checksum the Hub reports; installs nothing unless every file is good and the folder loads as a
    model. Raises HubError subclasses with a message for the user. Safe to run in a worker
    thread: `progress` is called from that thread, and setting `cancel` stops within one chunk
    (or one graph, while building).
    """
    entry = catalog_entry(name)
    if not entry.onnx:
        raise HubError(f"{entry.name} has no ONNX release on the Hub. {entry.summary}")
    variant = variant or default_variant(entry.kind)
    if entry.variants is not None and variant not in entry.variants:
        raise HubError(f"{entry.name} has no {variant} release; available: {', '.join(entry.variants)}")
    entry.graph_files(variant)  # rejects an unknown variant name before any network access
    wanted_revision = revision or entry.revision or "main"
    dest = paths.models_dir() / entry.name
    if entry.ask_before_download and not accept_licence and read_manifest(dest) is None:
        raise LicenceNotAccepted(f"{licence_question(entry)} To accept it and download, pull again "
                                 "with --accept-licence (in the window: answer Yes when asked).")
    with _hub_online():
        info, endpoint = _model_info(entry, wanted_revision)
        weights = _weights_plan(entry, info) if _has_weights(info) else []
        build = (entry.kind == paths.CHAT and not official and variant in BUILT_VARIANTS
                 and _small_enough_to_build(weights))  # the exporter builds SmolVLMs only
        files = weights if build else _plan(entry, variant, info)
        if _already_built(dest, info.sha, variant) if build else _already_installed(dest, info.sha, variant, files):
            _report_complete(progress, files)
            return dest
        staging = _staging_dir(entry.name + (WEIGHTS_SUFFIX if build else ""), entry.repo, info.sha)
        recorded = _fetch_all(entry.repo, info.sha, files, staging, endpoint, progress, cancel)
    manifest = _hub_manifest(entry, wanted_revision, info.sha, variant, recorded, endpoint)
    if entry.ask_before_download:
        manifest["licence_accepted"] = entry.licence
    if build:
        return _build_and_install(staging, dest, manifest, progress, cancel)
    return _install_download(staging, dest, manifest, variant)


def pull_weights(name: str, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                 *, revision: str | None = None) -> tuple[Path, str]:
    """Download a catalog model's PyTorch checkpoint (configs, tokenizer, safetensors) for
    `models build`; return the folder and the commit it came from.

    Checked file by file and resumable exactly as `pull` is. The folder is a staging one
    (models/.partial/NAME.weights): the caller removes it once the build is installed, and
    an interrupted download or a failed build keeps it for the next try."""
    entry = catalog_entry(name)
    with _hub_online():
        info, endpoint = _model_info(entry, revision or entry.revision or "main")
        staging = _staging_dir(entry.name + WEIGHTS_SUFFIX, entry.repo, info.sha)
        _fetch_all(entry.repo, info.sha, _weights_plan(entry, info), staging, endpoint, progress, cancel)
    return staging, info.sha


def _model_info(entry: CatalogEntry, revision: str) -> tuple[Any, str]:
    """The Hub's record of the entry's repo at `revision` (every file with its size and
    checksum), and the endpoint asked. Inside `_hub_online()`."""
    from huggingface_hub import HfApi

    from . import __version__

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=False, library_name="smolvlm-desktop", library_version=__version__)
    with _reaching_hub(endpoint, f"cannot look up {entry.repo}@{revision}"):
        return api.model_info(entry.repo, revision=revision, files_metadata=True, timeout=30), endpoint


def _fetch_all(repo: str, commit: str, files: list[RemoteFile], staging: Path, endpoint: str,
               progress: ProgressCallback | None, cancel: threading.Event | None) -> dict[str, dict[str, Any]]:
    """Bring every file into `staging` (see _fetch); their sizes and sha256, for a manifest."""
    tracker = _Tracker(progress, total=sum(f.size for f in files), files_total=len(files))
    return {remote.path: {"size": remote.size,
                          "sha256": _fetch(_file_url(repo, commit, remote.path, endpoint), remote, staging,
                                           tracker, cancel, endpoint)}
            for remote in files}


_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def _weights_plan(entry: CatalogEntry, info: Any) -> list[RemoteFile]:
    """The files a build needs: configs, tokenizer and the safetensors weights (one file, or
    shards and their index)."""
    by_name = {s.rfilename: s for s in info.siblings or []}
    weights = (["model.safetensors"] if "model.safetensors" in by_name else
               sorted(n for n in by_name if _SHARD.fullmatch(n)))
    if weights and weights[0] != "model.safetensors":
        weights.append("model.safetensors.index.json")
    missing = [f for f in [*entry.common_files, *weights] if f not in by_name]
    if not weights or missing:
        raise HubError(f"{entry.repo} at {info.sha} has no {', '.join(missing) or 'model.safetensors'}: "
                       "no PyTorch weights to build from")
    wanted = [*entry.common_files, *(f for f in entry.optional_files if f in by_name), *weights]
    return [_remote_file(entry, by_name[name]) for name in wanted]


def _has_weights(info: Any) -> bool:
    """Whether the repo publishes the weights a build starts from (one file, or shards)."""
    names = {s.rfilename for s in info.siblings or []}
    return "model.safetensors" in names or any(_SHARD.fullmatch(n) for n in names)


def _small_enough_to_build(weights: list[RemoteFile]) -> bool:
    """Weights to build from, within MAX_BUILD_WEIGHTS_BYTES."""
    size = sum(f.size for f in weights if f.path.endswith(".safetensors"))
    return bool(weights) and size <= MAX_BUILD_WEIGHTS_BYTES


def _already_built(dest: Path, commit: str, variant: str) -> bool:
    """True when graphs built from this commit's weights are installed and every file still
    has the size its manifest records."""
    manifest = read_manifest(dest)
    if not manifest or manifest.get("source") != "built" or manifest.get("revision") != commit:
        return False
    if variant not in manifest.get("variants", []):
        return False
    return all((dest / rel).is_file() and (dest / rel).stat().st_size == f.get("size")
               for rel, f in manifest["files"].items())


def build_from_weights(weights: Path, out: Path, progress: ProgressCallback | None = None,
                       cancel: threading.Event | None = None) -> dict[str, dict[str, Any]]:
    """Write this app's graphs (fp32 and int8) into `out` from the checkpoint folder `weights`
    (model.safetensors read with numpy: no torch), check the result loads as a model, and
    return every file's size and sha256 for a manifest.

    `out` is emptied first: a build that was stopped starts again (a few seconds to a minute;
    the download it needs is what resumes). ExportError and cancel become HubError."""
    from .export import ExportError
    from .export.build import build_from_safetensors

    shutil.rmtree(out, ignore_errors=True)

    def step(what: str, done: int, total: int) -> None:
        _check_cancel(cancel, "the build")
        if progress is not None:
            progress(PullProgress(what, done, total, done, total, done, total, stage="build"))

    try:
        build_from_safetensors(weights, out, quantize=("int8",), on_step=step)
    except ExportError as exc:
        raise HubError(f"cannot build the graphs from {weights.name}: {exc}") from exc
    _validate_folder(out, DEFAULT_VARIANT, cleanup=out)
    return {p.relative_to(out).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(out.rglob("*")) if p.is_file()}


def _build_and_install(weights: Path, dest: Path, manifest: dict[str, Any], progress: ProgressCallback | None,
                       cancel: threading.Event | None) -> Path:
    """Build the graphs from the downloaded weights and install them as `dest`; the weights
    (models/.partial/NAME.weights) go once the model is installed and stay for a retry if the
    build fails or is cancelled."""
    out = weights / BUILD_DIR_NAME
    files = build_from_weights(weights, out, progress, cancel)
    manifest = {**manifest, "source": "built", "variants": sorted(BUILT_VARIANTS), "files": files,
                "weights": manifest["files"],
                "origin": f"built on this machine from the weights of {manifest['repo']}@{manifest['revision']}"}
    write_manifest(out, manifest)
    _move_into_place(out, dest)
    shutil.rmtree(weights, ignore_errors=True)
    _remove_if_empty(weights.parent)
    return dest


def install_built(folder: Path, name: str, repo: str, commit: str) -> Path:
    """Install a folder that `models build` exported (moved, not copied), with a manifest
    that says where its weights came from."""
    dest = import_folder(folder, name=name, copy=False)
    manifest = read_manifest(dest) or {}
    manifest.update({"source": "built", "repo": repo, "revision": commit,
                     "origin": f"exported on this machine from the PyTorch weights of {repo}@{commit}"})
    write_manifest(dest, manifest)
    return dest


def _file_url(repo: str, commit: str, path: str, endpoint: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo, path, revision=commit, endpoint=endpoint)


def _already_installed(dest: Path, commit: str, variant: str, files: list[RemoteFile]) -> bool:
    """True when this exact commit and variant is installed and every file still has its size."""
    manifest = read_manifest(dest)
    if not manifest or manifest.get("revision") != commit or variant not in manifest.get("variants", []):
        return False
    return all((dest / f.path).is_file() and (dest / f.path).stat().st_size == f.size for f in files)


def _report_complete(progress: ProgressCallback | None, files: list[RemoteFile]) -> None:
    if progress is not None:
        total = sum(f.size for f in files)
        last = files[-1]
        progress(PullProgress(last.path, last.size, last.size, total, total, len(files), len(files)))


def _staging_dir(name: str, repo: str, commit: str) -> Path:
    """models/.partial/NAME, emptied first if it holds a download of another commit."""
    staging = paths.models_dir() / PARTIAL_DIR_NAME / name
    marker = staging / ".pull.json"
    state = {"repo": repo, "revision": commit}
    if staging.exists():
        try:
            same = json.loads(marker.read_text(encoding="utf-8")) == state
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(staging)
    paths.private_dir(staging)  # a new data folder is owner-only from the start
    marker.write_text(json.dumps(state), encoding="utf-8")
    return staging


class _Part:
    """A `.part` file being filled, with running hashes of what it holds so far.

    sha256 is always kept (it goes into the manifest); the git blob id only for small files,
    for which the Hub reports that instead of a sha256.
    """

    def __init__(self, path: Path, remote: RemoteFile) -> None:
        self.path, self.remote = path, remote
        self.restart(delete=False)

    def restart(self, delete: bool = True) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(b"blob %d\0" % self.remote.size) if self.remote.sha256 is None else None

    def append(self, out: Any, data: bytes) -> None:
        out.write(data)
        self.hash(data)

    def hash(self, data: bytes) -> None:
        self.size += len(data)
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)

    def load_existing(self) -> None:
        """Hash what an earlier attempt left, or drop it if it cannot be a prefix of the file."""
        if not self.path.is_file():
            return
        if self.path.stat().st_size > self.remote.size:
            self.restart()
            return
        with self.path.open("rb") as f:
            for block in iter(lambda: f.read(COPY_CHUNK), b""):
                self.hash(block)


def _fetch(url: str, remote: RemoteFile, staging: Path, tracker: _Tracker,
           cancel: threading.Event | None, endpoint: str) -> str:
    """Bring one file into the staging folder, resuming its `.part` file; return its sha256."""
    final = staging / remote.path
    final.parent.mkdir(parents=True, exist_ok=True)
    part = _Part(final.with_name(final.name + ".part"), remote)
    tracker.start_file(remote.path, remote.size)
    if final.is_file():  # finished by an earlier pull: hash it again rather than trust it
        os.replace(final, part.path)
    part.load_existing()
    tracker.add(part.size)
    attempts = 0
    while part.size < remote.size:
        _check_cancel(cancel, remote.path)
        try:
            _stream_into(url, part, tracker, cancel, endpoint)
        except _ConnectionLost as lost:
            attempts += 1
            if attempts > CHUNK_RETRIES:
                raise HubUnreachableError(
                    f"the connection to {endpoint} dropped {attempts} times while downloading "
                    f"{remote.path} ({lost}). {_human(part.size)} of {_human(remote.size)} are kept: "
                    "run the same pull again to resume.") from lost
            time.sleep(0.2 * attempts)
    _check_file(part)
    os.replace(part.path, final)
    tracker.finish_file()
    return part.sha256.hexdigest()


class _ConnectionLost(Exception):
    """The body stopped before its end; the caller reconnects with a Range request."""


def _stream_into(url: str, part: _Part, tracker: _Tracker, cancel: threading.Event | None,
                 endpoint: str) -> None:
    """One HTTP request appending to the part file from where it ends."""
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    what = f"cannot download {part.remote.path}"
    headers = {"Range": f"bytes={part.size}-"} if part.size else {}
    timeout = httpx2.Timeout(connect=15, read=60, write=60, pool=15)
    with ExitStack() as stack:
        with _reaching_hub(endpoint, what):
            response = stack.enter_context(get_session().stream("GET", url, headers=headers, timeout=timeout))
            if response.status_code == 416:  # what we kept is not a prefix of the file: start over
                tracker.rewind(part.size)
                part.restart()
                return
            hf_raise_for_status(response)
        if part.size and response.status_code != 206:  # the server ignored Range: start over
            tracker.rewind(part.size)
            part.restart()
        with part.path.open("ab") as out:
            for chunk in _body(response):
                _check_cancel(cancel, part.remote.path)
                part.append(out, chunk)
                tracker.add(len(chunk))
                if part.size > part.remote.size:
                    break


def _body(response: Any) -> Iterator[bytes]:
    """The response's chunks; a broken connection becomes _ConnectionLost (the caller resumes)."""
    import httpx2

    chunks = response.iter_bytes()
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except httpx2.TransportError as exc:
            raise _ConnectionLost(_describe(exc)) from exc
        if chunk:
            yield chunk


def _check_cancel(cancel: threading.Event | None, path: str) -> None:
    if cancel is not None and cancel.is_set():
        raise PullCancelled(f"download cancelled during {path}; what was downloaded is kept, "
                            "and the same pull resumes it")


def _check_file(part: _Part) -> None:
    """Size and checksum against the Hub's; a bad file is deleted so the next pull fetches it anew."""
    remote = part.remote
    problem = None
    if part.size != remote.size:
        problem = f"it has {part.size} bytes, the Hub says {remote.size}"
    elif remote.sha256 is not None and part.sha256.hexdigest() != remote.sha256:
        problem = f"its sha256 is {part.sha256.hexdigest()}, the Hub says {remote.sha256}"
    elif part.git is not None and part.git.hexdigest() != remote.git_blob:
        problem = f"its git blob id is {part.git.hexdigest()}, the Hub says {remote.git_blob}"
    if problem:
        part.path.unlink()
        raise ChecksumError(f"the download of {remote.path} is corrupt ({problem}). The file was "
                            "deleted and nothing was installed; run the pull again.")


def _hub_manifest(entry: CatalogEntry, requested: str, commit: str, variant: str,
                  files: dict[str, dict[str, Any]], endpoint: str) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA, "name": entry.name, "source": "hub", "repo": entry.repo,
        "endpoint": endpoint, "requested_revision": requested, "revision": commit,
        "variants": [variant], "installed_at": _now(), "files": files,
    }


def _install_download(staging: Path, dest: Path, manifest: dict[str, Any], variant: str) -> Path:
    """Validate the complete download and move it into place (adding a variant to the same commit)."""
    _validate_folder(staging, variant, cleanup=staging)
    old = read_manifest(dest)
    if old and old.get("source") == "hub" and old.get("revision") == manifest["revision"]:
        for rel in manifest["files"]:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
        old["files"].update(manifest["files"])
        old["variants"] = sorted(set(old.get("variants", [])) | {variant})
        old["installed_at"] = manifest["installed_at"]
        write_manifest(dest, old)
        shutil.rmtree(staging)
    else:
        (staging / ".pull.json").unlink(missing_ok=True)
        write_manifest(staging, manifest)
        _move_into_place(staging, dest)
    _remove_if_empty(staging.parent)
    return dest


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another download in progress) or already gone


def _validate_folder(folder: Path, variant: str | None, cleanup: Path | None) -> Any:
    """Load the folder as the engine will; on failure delete `cleanup` and explain."""
    from .engine.embeddings import load_embedding_files
    from .engine.files import load_model_files
    from .engine.types import ModelFolderError

    try:
        embedding = paths.model_kind(folder) == paths.EMBEDDING
        files = load_embedding_files(folder) if embedding else load_model_files(folder)
        if variant is not None:
            files.choose_variant(variant)
        return files
    except ModelFolderError as exc:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise HubError(f"the files do not form a usable SmolVLM model: {exc}") from exc


def _move_into_place(src: Path, dest: Path) -> None:
    """Swap `src` in as `dest` with renames, so a reader never sees half a model."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        trash = paths.models_dir() / PARTIAL_DIR_NAME / f"{TRASH_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dest, trash)
        os.replace(src, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dest)


# --------------------------------------------------------------------------------------------
# Manifests and verification (local only).


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    _atomic_write(folder / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    """The app's one atomic writer (library/atomic.py: synced to disk, the file's permission
    bits kept), with its failure said as a HubError like every other model-manager failure."""
    from .library.atomic import OutputError, atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_text(path, text)
    except OutputError as exc:
        raise HubError(str(exc)) from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(COPY_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(name: str) -> list[str]:
    """Re-hash an installed model against its manifest; return the problems (empty = all good)."""
    folder = _installed_folder(name)
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder} has no readable {MANIFEST_NAME}: it was not installed by pull or import, "
                "so there is nothing to check it against (import it to record one)"]
    problems = []
    for rel, expected in sorted(manifest["files"].items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != expected.get("size"):
            problems.append(f"{rel}: size {path.stat().st_size}, expected {expected.get('size')}")
        elif sha256_file(path) != expected.get("sha256"):
            problems.append(f"{rel}: content changed (sha256 differs from the manifest)")
    return problems


# --------------------------------------------------------------------------------------------
# import, remove, default, list (local only).

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
IMPORT_SUFFIXES = (".json", ".jinja", ".txt", ".md")


def _check_name(name: str) -> str:
    if not NAME_RE.match(name) or name == paths.DEMO_MODEL_NAME:
        raise HubError(f"{name!r} cannot be a model name: use letters, digits, '.', '_', '-' or '+', "
                       f"not starting with '.', and not '{paths.DEMO_MODEL_NAME}'")
    return name


def _installed_folder(name: str) -> Path:
    folder = paths.models_dir() / name
    if NAME_RE.match(name) and folder.is_dir():
        return folder
    names = ", ".join(p.name for p in paths.installed_models(kind=None)) or "none"
    raise NotInstalledError(f"no installed model named {name!r} (installed: {names})")


def import_folder(src: str | Path, name: str | None = None, copy: bool = True,
                  progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> Path:
    """Check a model folder with the engine's reader and install it under `name` with a manifest.

    copy=True copies the configs, tokenizer and `onnx/` (not PyTorch weights or other clutter)
    and leaves the folder alone. copy=False moves the whole folder with one rename: instant, but
    only possible on the same disk.

    A transformers checkpoint folder (config.json and model.safetensors, no onnx/: a fine-tune,
    say) is built instead: this app's graphs are written from its weights (no torch) and
    installed, and the folder is left alone.
    """
    src = Path(src).expanduser().resolve()
    clean_stale_partials()
    if is_checkpoint_folder(src):
        return _import_checkpoint(src, name, progress, cancel)
    _validate_folder(src, None, cleanup=None)
    _smoke_test(src)
    name = _check_name(name or src.name)
    dest = paths.models_dir() / name
    if dest.exists():
        raise HubError(f"a model named {name!r} is already installed; remove it first or choose "
                       "another name with --name")
    wanted = _import_files(src)
    tracker = _Tracker(progress, total=sum((src / f).stat().st_size for f in wanted), files_total=len(wanted))
    if not copy:
        _move_folder(src, dest)
        recorded = {rel: _hash_in_place(dest / rel, rel, tracker) for rel in wanted}
        _write_import_manifest(dest, name, src, recorded)
        return dest
    with _import_staging(name) as staging:
        recorded = {rel: _copy_and_hash(src / rel, staging / rel, rel, tracker) for rel in wanted}
        _write_import_manifest(staging, name, src, recorded)
        _move_into_place(staging, dest)
    return dest


def _smoke_test(folder: Path) -> None:
    """Load the folder as `caption` would by default (its default variant, on the CPU) and
    generate one token about a small image: a folder whose graphs are swapped or broken is
    refused here, not made the default that every later caption fails on. Other variants
    are checked as `caption --variant` loads them."""
    from PIL import Image

    from .engine.model import VisionLanguageModel
    from .engine.types import EngineError, GenerationSettings, Message

    if paths.model_kind(folder) == paths.EMBEDDING:
        return _smoke_test_embedding(folder)
    try:
        model = VisionLanguageModel.load(folder, provider="cpu", threads=1)
        try:
            model.generate([Message("user", "Describe.", images=(Image.new("RGB", (32, 32)),))],
                           GenerationSettings(max_new_tokens=1))
        finally:
            model.close()
    except EngineError as exc:  # ModelFolderError included
        raise HubError(f"the files do not form a usable SmolVLM model: {exc}") from exc


def _smoke_test_embedding(folder: Path) -> None:
    """An embedding model (search by meaning) is checked the same way: a picture and a text
    must each come out as one vector of the model's size."""
    from PIL import Image

    from .engine.embeddings import EmbeddingModel
    from .engine.types import EngineError

    try:
        model = EmbeddingModel.load(folder, provider="cpu", threads=1)
        pictures, texts = model.embed_images([Image.new("RGB", (32, 32))]), model.embed_texts(["a"])
    except EngineError as exc:
        raise HubError(f"the files do not form a usable embedding model: {exc}") from exc
    if pictures.shape[0] != 1 or texts.shape != pictures.shape:
        raise HubError(f"the embedding model gives vectors of {pictures.shape} for a picture and "
                       f"{texts.shape} for a text; they must match")


@contextmanager
def _import_staging(name: str) -> Iterator[Path]:
    """A new .partial/.import-NAME-xxxxxxxx folder for an import's copy, held under an OS
    lock (its .lock file) until the import ends, then removed. The OS drops the lock of a
    killed import, which is how `clean_stale_partials` tells its copy from a running one."""
    partial = paths.private_dir(paths.models_dir() / PARTIAL_DIR_NAME)
    while True:
        staging = partial / f"{IMPORT_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        lock = staging.with_name(staging.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        if try_lock(fd) and is_current(fd, lock):
            break
        os.close(fd)  # a cleaner took this brand-new file for a stale one: take another name
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _unlink_quietly(lock)  # before the lock goes, so nobody sees it free and stale
        os.close(fd)
        _remove_if_empty(partial)


def clean_stale_partials() -> list[Path]:
    """Remove what killed imports left in models/.partial (their copies: a lock file that no
    process holds, or a copy with no lock file) and replaced models that a kill left on their
    way out. Downloads to resume (.partial/NAME) are kept. Returns what was removed."""
    partial = paths.models_dir() / PARTIAL_DIR_NAME
    if not partial.is_dir():
        return []
    removed = []
    for lock in sorted(partial.glob(f"{IMPORT_PREFIX}*.lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # gone meanwhile
        try:
            if try_lock(fd):  # its import has ended: the OS let go of the lock
                copy = lock.with_suffix("")
                shutil.rmtree(copy, ignore_errors=True)
                _unlink_quietly(lock)
                removed.append(copy)
        finally:
            os.close(fd)
    for folder in sorted(partial.iterdir()):
        unlocked_copy = folder.name.startswith(IMPORT_PREFIX) and folder.is_dir() and \
            not folder.with_name(folder.name + ".lock").exists()
        if unlocked_copy or (folder.name.startswith(TRASH_PREFIX) and folder.is_dir()):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # already gone, or (Windows) still open elsewhere


def is_checkpoint_folder(folder: Path) -> bool:
    """A transformers checkpoint (weights to build from) rather than an ONNX model folder."""
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return weights and (folder / "config.json").is_file() and not (folder / "onnx").is_dir()


def _import_checkpoint(src: Path, name: str | None, progress: ProgressCallback | None,
                       cancel: threading.Event | None) -> Path:
    name = _check_name(name or src.name)
    dest = paths.models_dir() / name
    if dest.exists():
        raise HubError(f"a model named {name!r} is already installed; remove it first or choose "
                       "another name with --name")
    with _import_staging(name) as staging:  # locked: another process's clean-up leaves it alone
        files = build_from_weights(src, staging, progress, cancel)
        write_manifest(staging, {
            "schema": MANIFEST_SCHEMA, "name": name, "source": "built", "origin": str(src),
            "revision": None, "variants": sorted(BUILT_VARIANTS), "installed_at": _now(), "files": files,
        })
        _move_into_place(staging, dest)
    return dest


def _import_files(src: Path) -> list[str]:
    top = [p.name for p in sorted(src.iterdir())
           if p.is_file() and p.suffix in IMPORT_SUFFIXES and p.name != MANIFEST_NAME]
    onnx = [p.relative_to(src).as_posix() for p in sorted((src / "onnx").rglob("*")) if p.is_file()]
    return top + onnx


def _write_import_manifest(folder: Path, name: str, src: Path, files: dict[str, Any]) -> None:
    variants = sorted(_validate_folder(folder, None, cleanup=None).variants)
    write_manifest(folder, {
        "schema": MANIFEST_SCHEMA, "name": name, "source": "import", "origin": str(src),
        "revision": None, "variants": variants, "installed_at": _now(), "files": files,
    })


def _move_folder(src: Path, dest: Path) -> None:
    paths.private_dir(dest.parent)  # a new data folder is owner-only from the start
    try:
        os.rename(src, dest)
    except OSError as exc:
        raise HubError(f"cannot move {src} to {dest} ({exc.strerror or exc}); "
                       "import it with a copy instead") from exc


def _copy_and_hash(src: Path, dst: Path, rel: str, tracker: _Tracker) -> dict[str, Any]:
    """Copy one file and hash it in the same pass."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tracker.start_file(rel, src.stat().st_size)
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        for block in iter(lambda: fin.read(COPY_CHUNK), b""):
            digest.update(block)
            fout.write(block)
            tracker.add(len(block))
    tracker.finish_file()
    return {"size": dst.stat().st_size, "sha256": digest.hexdigest()}


def _hash_in_place(path: Path, rel: str, tracker: _Tracker) -> dict[str, Any]:
    size = path.stat().st_size
    tracker.start_file(rel, size)
    digest = sha256_file(path)
    tracker.add(size)
    tracker.finish_file()
    return {"size": size, "sha256": digest}


def remove(name: str) -> None:
    """Delete an installed model (and any download in progress of that name, weights for a
    build included)."""
    if name == paths.DEMO_MODEL_NAME:
        raise HubError("the demo model is part of the app and cannot be removed")
    had_partial = False
    if NAME_RE.match(name) is not None:
        for partial in (name, name + WEIGHTS_SUFFIX):
            folder = paths.models_dir() / PARTIAL_DIR_NAME / partial
            if folder.is_dir():
                shutil.rmtree(folder)
                had_partial = True
    try:
        folder = _installed_folder(name)
    except NotInstalledError:
        if had_partial:
            return
        raise
    shutil.rmtree(folder)
    for marker in (paths.default_model_file(), paths.default_embedding_file()):
        if marker.is_file() and marker.read_text(encoding="utf-8").strip() == name:
            marker.unlink()


def set_default(name: str) -> str:
    """Make `name` the model used when none is given (an installed model, or 'demo'). An
    embedding model becomes the one search by meaning uses (the chat default is untouched).
    Returns its kind."""
    kind = paths.CHAT
    if name != paths.DEMO_MODEL_NAME:
        folder = _installed_folder(name)
        kind, name = paths.model_kind(folder), folder.name
    paths.private_dir(paths.models_dir())  # a new data folder is owner-only from the start
    marker = paths.default_embedding_file() if kind == paths.EMBEDDING else paths.default_model_file()
    _atomic_write(marker, name + "\n")
    return kind


@dataclass(frozen=True)
class ModelStatus:
    """One row of the model manager: a catalog model and/or an installed folder."""

    name: str
    state: str  # "installed", "partial" (download to resume), "available", "no-onnx", "bundled"
    folder: Path | None
    summary: str = ""
    repo: str | None = None
    revision: str | None = None
    variants: tuple[str, ...] = ()
    size_bytes: int | None = None
    is_default: bool = False
    source: str | None = None  # "hub", "import", or None (no manifest)
    kind: str = paths.CHAT  # or paths.EMBEDDING (never offered as a chat model)
    licence: str = ""
    ask_before_download: bool = False
    family: str = ""  # an installed chat folder's model family ("SmolVLM", "FastVLM"), from its config.json


def list_models() -> list[ModelStatus]:
    """Catalog models (installed or not), then other installed folders, then the bundled demo.
    What killed imports left behind is removed first (clean_stale_partials)."""
    clean_stale_partials()
    installed = {p.name: p for p in paths.installed_models(kind=None)}
    default = paths.default_model_name()
    search_default = paths.default_embedding_model_name()
    rows = []
    for entry in load_catalog():
        folder = installed.pop(entry.name, None)
        if folder is not None:
            rows.append(_installed_status(folder, default, entry, search_default))
            continue
        partials = paths.models_dir() / PARTIAL_DIR_NAME
        started = (partials / entry.name).is_dir() or (partials / (entry.name + WEIGHTS_SUFFIX)).is_dir()
        state = "no-onnx" if not entry.onnx else "partial" if started else "available"
        rows.append(ModelStatus(entry.name, state, None, entry.summary, entry.repo, entry.revision,
                               entry.variants or (), kind=entry.kind, licence=entry.licence,
                               ask_before_download=entry.ask_before_download))
    rows += [_installed_status(folder, default, None, search_default) for folder in installed.values()]
    rows.append(ModelStatus(paths.DEMO_MODEL_NAME, "bundled", paths.demo_model_dir(),
                            "tiny random-weight model shipped with the app; its answers are noise",
                            is_default=default == paths.DEMO_MODEL_NAME))
    return rows


def _installed_status(folder: Path, default: str | None, entry: CatalogEntry | None,
                      search_default: str | None = None) -> ModelStatus:
    """`default` is the chat models' default, `search_default` the embedding models' one."""
    manifest = read_manifest(folder) or {}
    files = manifest.get("files") or {}
    size = sum(int(f.get("size", 0)) for f in files.values()) if files else _folder_size(folder)
    kind = paths.model_kind(folder)
    return ModelStatus(
        folder.name, "installed", folder, entry.summary if entry else "",
        manifest.get("repo") or (entry.repo if entry else None), manifest.get("revision"),
        tuple(manifest.get("variants") or ()), size,
        folder.name == (search_default if kind == paths.EMBEDDING else default), manifest.get("source"), kind,
        family=_family_name(folder) if kind == paths.CHAT else "")


def _family_name(folder: Path) -> str:
    """The model family config.json names; "" when it cannot be read (the row still lists)."""
    from .engine.families import family_for

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return family_for(config).name if isinstance(config, dict) else ""


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _human(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{nbytes} B"
