"""Caption output files, shared by the CLI and the window.

Formats (``FORMATS``)::

    txt      <stem>.txt beside each image      (kohya_ss, OneTrainer, taggui read these)
    caption  <stem>.caption beside each image  (the same, for trainers set to .caption)
    json     <stem>.json beside each image     {file_name, text, model, prompt, timings}
    jsonl    metadata.jsonl in one folder      (Hugging Face "imagefolder": one row per image)
    csv      captions.csv in one folder        (the same columns, for spreadsheets)
    xmp      <name>.<ext>.xmp beside each image, caption in dc:description (photo managers)

Existing captions (``existing``): ``"skip"`` (default) never touches a caption that is already
there, ``"overwrite"`` replaces it, ``"append"`` adds the new one on a new line. A format that
has no caption yet for an image is written under every policy.

Use::

    with CaptionWriter(["txt", "jsonl"], existing="skip", aggregate_dir=folder) as writer:
        for image in images:
            if writer.has_caption(image):
                continue  # every requested file already holds a caption: no need to run the model
            writer.write(image, text, CaptionMeta(model=name, prompt=prompt, timings=t))

``write`` returns the files written (or, for jsonl/csv, to be written at the next flush) and
raises :class:`OutputError` with the file and the reason. Every file is replaced atomically
(``atomic.py``), so a crash at any instant leaves each file either old or new, never half.

jsonl/csv trade-off: their rows live in memory and the whole file is rewritten atomically
at most every ``flush_seconds`` (and at ``flush()``/``close()``). Appending line by line would
be cheaper but a crash mid-line leaves an invalid file, and it cannot replace a row in place.
Rewriting on every image would make a 50,000-image batch quadratic (about 15 MB written per
image at the end). The cost: a crash loses at most the last ``flush_seconds`` of rows from
these two files; the next run's skip policy sees them missing and captions those images again.
The interval also stretches to ten times the last save's duration, so saving never takes more
than about a tenth of the batch's time. ``flush_seconds=0`` saves after every image.

When ``aggregate_dir`` is None, each image's own folder gets its metadata.jsonl/captions.csv.
``file_name`` is the image path relative to that folder, with forward slashes.

XMP file name: ``photo.jpg.xmp`` (darktable, digiKam, Immich, exiftool's ``%f.%e.xmp``) rather
than ``photo.xmp`` (Lightroom, Bridge). Lightroom writes ``photo.xmp`` only for raw files and
keeps JPEG/PNG metadata inside the image, so ``photo.xmp`` gains nothing for our images and
would collide with the raw sidecar of ``photo.CR2`` shot as RAW+JPEG, and with ``photo.png``
beside ``photo.jpg``. An existing XMP sidecar (darktable keeps its edit history there) is
merged: only dc:description changes, every other element is kept.

Embedding the caption in the image file itself (``embed=True``) needs the optional ``pyexiv2``
package, which edits metadata without re-encoding pixels; this module never re-saves an image.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Mapping, Sequence

from .. import oslock
from ..engine.types import Timings
from ..paths import printable
from .atomic import OutputError, atomic_write_text, describe_os_error, existing_file_mode

FORMATS: tuple[str, ...] = ("txt", "caption", "json", "jsonl", "csv", "xmp")
SIDECAR_SUFFIXES = {"txt": ".txt", "caption": ".caption", "json": ".json"}
AGGREGATE_NAMES = {"jsonl": "metadata.jsonl", "csv": "captions.csv"}
EXISTING_POLICIES: tuple[str, ...] = ("skip", "overwrite", "append")
ExistingPolicy = Literal["skip", "overwrite", "append"]
COLUMNS: tuple[str, ...] = ("file_name", "text", "model", "prompt", "timings")
EMBED_NEEDS = "embedding needs the optional 'pyexiv2' package (pip install pyexiv2)"

__all__ = [
    "AGGREGATE_NAMES", "COLUMNS", "EXISTING_POLICIES", "FORMATS", "CaptionMeta", "CaptionWriter",
    "OutputError", "aggregate_path", "caption_exists", "output_path",
]


@dataclass(frozen=True)
class CaptionMeta:
    """What is recorded beside the text in json/jsonl/csv: which model, which prompt, how fast."""

    model: str = ""
    prompt: str = ""
    timings: Mapping[str, Any] | Timings = field(default_factory=dict)

    def timings_dict(self) -> dict[str, Any]:
        """The engine's Timings (or any mapping) as the plain dict the files store."""
        if isinstance(self.timings, Timings):
            return dict(self.timings.as_dict())
        return dict(self.timings)


# --- where files go ----------------------------------------------------------------------------


def output_path(image_path: Path, fmt: str, aggregate_dir: Path | None = None) -> Path:
    """The file that holds image_path's caption in format fmt."""
    image_path = Path(image_path)
    if fmt in AGGREGATE_NAMES:
        return aggregate_path(fmt, aggregate_dir or image_path.parent)
    if fmt == "xmp":
        return image_path.with_name(image_path.name + ".xmp")
    if fmt in SIDECAR_SUFFIXES:
        return image_path.with_name(image_path.stem + SIDECAR_SUFFIXES[fmt])
    raise ValueError(f"unknown caption format {fmt!r}; choose from {', '.join(FORMATS)}")


def aggregate_path(fmt: str, folder: Path) -> Path:
    return Path(folder) / AGGREGATE_NAMES[fmt]


def relative_name(image_path: Path, folder: Path) -> str:
    """file_name for jsonl/csv: relative to folder, forward slashes (absolute if impossible).

    A name that is not valid UTF-8 (a byte such as 0xFF on Linux) is written escaped, as
    `odd\\xff.png`: the files must stay valid UTF-8 for every reader, and the same escaped
    name is what the next run looks for, so the image is not captioned again."""
    image, base = os.path.abspath(image_path), os.path.abspath(folder)
    try:
        return printable(Path(os.path.relpath(image, base)).as_posix())
    except ValueError:  # another drive on Windows
        return printable(Path(image).as_posix())


def caption_exists(image_path: Path, formats: Sequence[str],
                   aggregate_dir: Path | None = None) -> bool:
    """True when every format in formats already holds a caption for image_path.

    "Every", not "any": a folder with .txt captions still needs the model run when the user
    now also asks for metadata.jsonl. Aggregate files are read once per change on disk.
    """
    image_path = Path(image_path)
    for fmt in _check_formats(formats):
        target = output_path(image_path, fmt, aggregate_dir)
        if fmt in AGGREGATE_NAMES:
            folder = aggregate_dir or image_path.parent
            if relative_name(image_path, folder) not in _aggregate_keys_on_disk(target, fmt):
                return False
        elif not _sidecar_has_caption(target, fmt):
            return False
    return True


def _aggregate_keys_on_disk(path: Path, fmt: str) -> frozenset[str]:
    """Unreadable counts as empty: the write that follows reports why, for that image."""
    try:
        info = path.stat()
        return _cached_keys(str(path), fmt, info.st_mtime_ns, info.st_size)
    except (OSError, OutputError):
        return frozenset()


@lru_cache(maxsize=16)
def _cached_keys(path: str, fmt: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Keyed by modification time and size, so a changed file is read again."""
    return frozenset(_Aggregate(Path(path), fmt).rows)


def _sidecar_has_caption(path: Path, fmt: str) -> bool:
    """An empty file (some tools create placeholders) holds no caption, nor does a folder or
    a device that happens to have the name (writing then says what it is)."""
    if not _nonempty(path):
        return False
    if fmt == "xmp":
        try:
            return bool(_xmp_caption(_read_xmp(path)))
        except OutputError:
            return True  # unreadable: treat as taken, so skip never touches it
    return True


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown caption format {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


# --- the writer --------------------------------------------------------------------------------


class CaptionWriter:
    """Writes each image's caption in the chosen formats; see the module docstring."""

    def __init__(self, formats: Sequence[str], existing: ExistingPolicy | str = "skip",
                 aggregate_dir: Path | None = None, *, flush_seconds: float = 2.0,
                 embed: bool = False) -> None:
        if existing not in EXISTING_POLICIES:
            raise ValueError(f"existing must be one of {', '.join(EXISTING_POLICIES)}")
        self.formats = _check_formats(formats)
        if not self.formats and not embed:
            raise ValueError("choose at least one caption format")
        self.existing = existing
        self.aggregate_dir = Path(aggregate_dir) if aggregate_dir is not None else None
        self.flush_seconds = flush_seconds
        self._embedder = _Embedder() if embed else None
        self._aggregates: dict[Path, _Aggregate] = {}
        self._claimed: dict[Path, Path] = {}  # sidecar -> the image it belongs to
        self._last_save = float("-inf")
        self._last_save_seconds = 0.0
        self._closed = False
        self.last_notes: list[str] = []  # what the last write() wants the user told

    # public API

    def has_caption(self, image_path: Path) -> bool:
        """True when every chosen format already holds a caption for this image (batch skip)."""
        image_path = Path(image_path)
        for fmt in self.formats:
            if fmt in AGGREGATE_NAMES:
                try:
                    aggregate = self._aggregate_for(fmt, image_path)
                except OutputError:
                    return False  # unreadable: write() says why, for this image
                if not aggregate.has(self._key(image_path, fmt)):
                    return False
            elif not _sidecar_has_caption(output_path(image_path, fmt), fmt):
                return False
        return self._embedder is None or bool(self._embedder.caption(image_path))

    def write(self, image_path: Path, text: str, meta: CaptionMeta | None = None) -> list[Path]:
        """Write text as image_path's caption in every chosen format, under the policy.

        Returns the files written (jsonl/csv: to be written at the next flush). A format that
        fails does not stop the others; the failures are raised together as one OutputError
        whose ``written`` attribute lists what did succeed.
        """
        if self._closed:
            raise ValueError("this CaptionWriter is closed")
        image_path, text, meta = Path(image_path), text.strip(), meta or CaptionMeta()
        self.last_notes = []
        written: list[Path] = []
        errors: list[OutputError] = []
        for fmt in self.formats:
            try:
                path = self._write_one(fmt, image_path, text, meta)
            except OutputError as exc:
                errors.append(exc)
            else:
                if path is not None:
                    written.append(path)
        if self._embedder is not None:
            try:
                if self._embedder.embed(image_path, text, self.existing):
                    written.append(image_path)
            except OutputError as exc:
                errors.append(exc)
        try:
            self._flush_if_due()
        except OutputError as exc:
            errors.append(exc)
        if errors:
            raise _combined(image_path, errors, written)
        return written

    def flush(self) -> None:
        """Save every jsonl/csv file that has new rows (atomically)."""
        started = time.monotonic()
        failures = []
        for aggregate in self._aggregates.values():
            try:
                aggregate.save()
            except OutputError as exc:
                failures.append(exc)
        self._last_save = time.monotonic()
        self._last_save_seconds = self._last_save - started
        if failures:
            raise failures[0]

    def close(self) -> None:
        """Flush and refuse further writes. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self.flush()

    def __enter__(self) -> CaptionWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # one format

    def _write_one(self, fmt: str, image: Path, text: str, meta: CaptionMeta) -> Path | None:
        if fmt in AGGREGATE_NAMES:
            aggregate = self._aggregate_for(fmt, image)
            row = {"file_name": self._key(image, fmt), "text": text, "model": meta.model,
                   "prompt": meta.prompt, "timings": meta.timings_dict()}
            return aggregate.path if aggregate.put(row, self.existing) else None
        target = self._claim(output_path(image, fmt), image)
        if not (self.existing == "skip" and _sidecar_has_caption(target, fmt)):
            self._check_replaceable(target)
        if fmt == "xmp":
            done = _write_xmp(target, text, self.existing)
        elif fmt == "json":
            done = _write_json_sidecar(target, image, text, meta, self.existing)
        else:
            done = _write_plain(target, text, self.existing)
        return target if done else None

    def _check_replaceable(self, target: Path) -> None:
        """Refuse a link or a non-file before anything is read or written (atomic.py would
        refuse it too, but a json or xmp sidecar is read first); note a read-only caption
        that the policy replaces: the user asked for it, but may not know it was protected."""
        mode = existing_file_mode(target)
        if mode is not None and not mode & stat.S_IWUSR:
            self.last_notes.append(f"{printable(target.name)} was read-only; replaced as asked "
                                   "(--overwrite/--append), and kept read-only")

    def _claim(self, sidecar: Path, image: Path) -> Path:
        """photo.jpg and photo.png both map to photo.txt: refuse the second, don't mix them."""
        if sidecar.resolve() == image.resolve():
            raise OutputError(sidecar, "it is the image itself")
        owner = self._claimed.setdefault(sidecar, image)
        if owner != image:
            raise OutputError(sidecar, f"it already holds the caption of {owner.name}; "
                                       f"rename {image.name} or {owner.name}")
        return sidecar

    def _aggregate_for(self, fmt: str, image: Path) -> _Aggregate:
        path = aggregate_path(fmt, self.aggregate_dir or image.parent)
        if path not in self._aggregates:
            self._aggregates[path] = _Aggregate(path, fmt)
        return self._aggregates[path]

    def _key(self, image: Path, fmt: str) -> str:
        return relative_name(image, self.aggregate_dir or image.parent)

    def _flush_if_due(self) -> None:
        """flush_seconds <= 0 saves after every image (small batches, the CLI, tests)."""
        if self.flush_seconds > 0:
            interval = max(self.flush_seconds, 10 * self._last_save_seconds)
            if time.monotonic() - self._last_save < interval:
                return
        self.flush()


def _combined(image: Path, errors: list[OutputError], written: list[Path]) -> OutputError:
    error = errors[0] if len(errors) == 1 else OutputError(
        image, "; ".join(str(e) for e in errors))
    error.written = written  # type: ignore[attr-defined]
    return error


# --- plain text and json sidecars --------------------------------------------------------------


def _append(old: str, new: str) -> str:
    old = old.rstrip("\r\n")
    return f"{old}\n{new}" if old.strip() else new


def _unreadable(path: Path, exc: OSError) -> OutputError:
    return OutputError(path, f"cannot read the existing file: {describe_os_error(exc)}")


def _read_text(path: Path) -> str | None:
    """The existing file's text, None if absent. Never guess at bytes we cannot decode.

    Read as bytes, so no line ending is translated: what is written back is what was there."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise OutputError(path, "the existing file is not UTF-8 text; left unchanged") from None
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _write_plain(path: Path, text: str, existing: str) -> bool:
    """kohya/taggui convention: the caption alone, no trailing newline."""
    if existing == "skip" and _sidecar_has_caption(path, "txt"):
        return False
    old = _read_text(path) if existing == "append" else None
    atomic_write_text(path, _append(old, text) if old else text)
    return True


def _write_json_sidecar(path: Path, image: Path, text: str, meta: CaptionMeta,
                        existing: str) -> bool:
    if existing == "skip" and _sidecar_has_caption(path, "json"):
        return False
    row: dict[str, Any] = {}
    old_text = _read_text(path)
    if old_text:
        try:
            loaded = json.loads(old_text)
        except ValueError:
            loaded = None
        if not isinstance(loaded, dict):
            if existing == "append":
                raise OutputError(path, "the existing file is not a JSON object; left unchanged")
            loaded = {}
        row = loaded  # keep keys other tools added
    if existing == "append" and row.get("text"):
        text = _append(str(row["text"]), text)
    row.update({"file_name": printable(image.name), "text": text, "model": meta.model,
                "prompt": meta.prompt, "timings": meta.timings_dict()})
    atomic_write_text(path, json.dumps(row, ensure_ascii=False, indent=2) + "\n")
    return True


# --- jsonl and csv -----------------------------------------------------------------------------


class _Aggregate:
    """The rows of one metadata.jsonl or captions.csv, in memory, keyed by file_name.

    Lines or rows this module cannot interpret are kept verbatim, and so are a CSV's unknown
    columns and the cells beyond its header: a user's file is never silently shortened.
    Loading a file that has the same file_name twice keeps the last row.

    Two batches may write one output folder at once. Each save therefore locks the folder
    (oslock.held: nothing is added to it, but on Windows a hidden ``.smolvlm.lock``), reads
    the file again and puts this writer's rows into what is there now, then replaces it:
    every row of both batches lands.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.mine: dict[str, dict[str, Any]] = {}  # rows put since the last save
        self._load()

    @property
    def dirty(self) -> bool:
        return bool(self.mine)

    def has(self, key: str) -> bool:
        return key in self.rows

    def put(self, row: dict[str, Any], existing: str) -> bool:
        """Add or update one row under the policy; False when skipped."""
        key = row["file_name"]
        old = self.rows.get(key)
        if old is not None and existing == "skip":
            return False
        if old is not None and existing == "append" and old.get("text"):
            row = {**row, "text": _append(str(old["text"]), row["text"])}
        self.rows[key] = {**(old or {}), **row}  # an existing key keeps its place in the file
        self.mine[key] = self.rows[key]
        return True

    def save(self) -> None:
        if not self.mine:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with oslock.held(self.path.parent):
                self._load()  # what another process saved since
                for key, row in self.mine.items():
                    self.rows[key] = {**self.rows.get(key, {}), **row}
                atomic_write_text(self.path, self._jsonl() if self.fmt == "jsonl" else self._csv())
        except TimeoutError as exc:
            raise OutputError(self.path, f"another program keeps it locked ({exc})") from None
        except OSError as exc:
            raise OutputError(self.path, describe_os_error(exc)) from None
        self.mine = {}

    def _load(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.foreign: list[Any] = []  # jsonl: raw lines; csv: rows without a file_name
        self.columns: list[str] = list(COLUMNS)
        text = _read_text(self.path)
        if text:
            self._load_jsonl(text) if self.fmt == "jsonl" else self._load_csv(text)

    # jsonl

    def _load_jsonl(self, text: str) -> None:
        """Lines end at \\n only: str.splitlines() also splits at U+2028, U+0085 and six
        other code points that json.dumps leaves unescaped inside a string."""
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("file_name"), str):
                self.rows[row["file_name"]] = row
            else:
                self.foreign.append(line)

    def _jsonl(self) -> str:
        lines = [json.dumps(row, ensure_ascii=False) for row in self.rows.values()]
        return "".join(line + "\n" for line in lines + self.foreign)

    # csv

    def _load_csv(self, text: str) -> None:
        try:
            reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""),
                                    restkey=_EXTRA_CELLS)
            header = reader.fieldnames or []
            if "file_name" not in header:
                raise OutputError(self.path, "the existing file has no file_name column; "
                                             "left unchanged")
            self.columns = list(header) + [c for c in COLUMNS if c not in header]
            for row in reader:
                row = {k: (_uncell(v) if k != _EXTRA_CELLS else v) for k, v in row.items()}
                if row.get("file_name"):
                    self.rows[row["file_name"]] = row
                else:
                    self.foreign.append(row)
        except csv.Error as exc:
            raise OutputError(self.path, f"the existing file is not valid CSV ({exc}); "
                                         "left unchanged") from None

    def _csv(self) -> str:
        """The header's columns in order, then the cells a row had beyond its header, as they
        were (they have no column name to put them under)."""
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(self.columns)
        for row in [*self.rows.values(), *self.foreign]:
            writer.writerow([_cell(row.get(c)) for c in self.columns] + row.get(_EXTRA_CELLS, []))
        return out.getvalue()


_EXTRA_CELLS = "\x00cells beyond the header"  # csv.DictReader's restkey: never a real column
_FORMULA_STARTS = ("=", "+", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """timings (a dict) as a JSON string in its CSV cell; text that a spreadsheet would run
    as a formula gets a leading apostrophe (captions can quote text read off a hostile image,
    and file names are anyone's choice). `_uncell` takes it off again when the file is read."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and _needs_guard(value):
        return "'" + value
    return "" if value is None else value


def _needs_guard(value: str) -> bool:
    """A formula start, also behind apostrophes: `'=x` is guarded as `''=x`, so that reading
    back (`_uncell`) gives every value exactly as it was written."""
    bare = value.lstrip("'")
    return bare[:1] != "" and bare[0] in _FORMULA_STARTS


def _uncell(value: Any) -> Any:
    """The cell as it was before `_cell` guarded it, so that `=sum.png` is found again."""
    if isinstance(value, str) and value[:1] == "'" and _needs_guard(value[1:]):
        return value[1:]
    return value


# --- XMP ---------------------------------------------------------------------------------------

X_NS = "adobe:ns:meta/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC_NS = "http://purl.org/dc/elements/1.1/"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_RDF = f"{{{RDF_NS}}}RDF"
_DESCRIPTION = f"{{{RDF_NS}}}Description"
_DC_DESCRIPTION = f"{{{DC_NS}}}description"
_ALT = f"{{{RDF_NS}}}Alt"
_LI = f"{{{RDF_NS}}}li"
_XMP_MAX_BYTES = 16 * 1024 * 1024
_NOT_XML_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SKELETON = (f'<x:xmpmeta xmlns:x="{X_NS}"><rdf:RDF xmlns:rdf="{RDF_NS}">'
             f'<rdf:Description rdf:about="" xmlns:dc="{DC_NS}"/></rdf:RDF></x:xmpmeta>')


def _write_xmp(path: Path, text: str, existing: str) -> bool:
    """Set dc:description (x-default) in a new or existing sidecar, keeping everything else."""
    root = _read_xmp(path) if _nonempty(path) else ET.fromstring(_SKELETON)
    old = _xmp_caption(root)
    if old and existing == "skip":
        return False
    _set_xmp_caption(root, _append(old, text) if old and existing == "append" else text)
    ET.indent(root, space=" ")
    document = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
    atomic_write_text(path, document + "\n")
    return True


def _nonempty(path: Path) -> bool:
    """A regular file (or a link to one) with something in it."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0


def _read_xmp(path: Path) -> ET.Element:
    """Parse an existing sidecar, refusing anything that is not plainly XMP."""
    try:
        if path.stat().st_size > _XMP_MAX_BYTES:
            raise OutputError(path, "the existing XMP file is implausibly large; left unchanged")
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:  # XMP never has a DTD; entities can bomb
        raise OutputError(path, "the existing XMP file declares a DTD; left unchanged")
    try:
        _register_prefixes(data)
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise OutputError(path, f"the existing XMP file is not well-formed XML ({exc}); "
                                "left unchanged") from None
    if root.tag != _RDF and root.find(_RDF) is None:
        raise OutputError(path, "the existing file is not XMP (no rdf:RDF); left unchanged")
    return root


def _register_prefixes(data: bytes) -> None:
    """Keep the file's own namespace prefixes (darktable:, xmp:, ...) when it is written back.

    ElementTree's prefix table is process-wide; registering a prefix only changes how that
    namespace is spelt in output, never what a document means.
    """
    for _event, (prefix, uri) in ET.iterparse(io.BytesIO(data), events=("start-ns",)):
        if not prefix or prefix == "xml":
            continue  # a default namespace is written with a generated prefix instead
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:  # prefixes such as ns0 are reserved by ElementTree
            pass
    ET.register_namespace("x", X_NS)
    ET.register_namespace("rdf", RDF_NS)
    ET.register_namespace("dc", DC_NS)


def _rdf(root: ET.Element) -> ET.Element:
    found = root if root.tag == _RDF else root.find(_RDF)
    assert found is not None  # checked by _read_xmp; the skeleton has one
    return found


def _xmp_caption(root: ET.Element) -> str:
    """The x-default (else first) dc:description, also in the rare attribute form."""
    for description in root.iter(_DESCRIPTION):
        if description.get(_DC_DESCRIPTION):
            return description.get(_DC_DESCRIPTION, "")
    element = root.find(f".//{_DC_DESCRIPTION}")
    if element is None:
        return ""
    items = list(element.iter(_LI))
    chosen = next((li for li in items if li.get(XML_LANG) == "x-default"), None)
    chosen = chosen if chosen is not None else (items[0] if items else element)
    return (chosen.text or "").strip()


def _set_xmp_caption(root: ET.Element, text: str) -> None:
    text = _NOT_XML_CHARS.sub("", text)
    for description in root.iter(_DESCRIPTION):
        description.attrib.pop(_DC_DESCRIPTION, None)  # rewritten below as a language list
    element = root.find(f".//{_DC_DESCRIPTION}")
    if element is None:
        holder = _rdf(root).find(_DESCRIPTION)
        if holder is None:
            holder = ET.SubElement(_rdf(root), _DESCRIPTION, {f"{{{RDF_NS}}}about": ""})
        element = ET.SubElement(holder, _DC_DESCRIPTION)
    alt = element.find(_ALT)
    if alt is None:
        element.clear()
        alt = ET.SubElement(element, _ALT)
    default = next((li for li in alt.iter(_LI) if li.get(XML_LANG) == "x-default"), None)
    if default is None:
        default = ET.Element(_LI, {XML_LANG: "x-default"})
        alt.insert(0, default)
    default.text = text


# --- embedding (optional) ----------------------------------------------------------------------


class _Embedder:
    """Caption into the image's own XMP via pyexiv2 (exiv2 edits metadata, pixels untouched)."""

    def __init__(self) -> None:
        try:
            import pyexiv2  # type: ignore[import-not-found]
        except ImportError:
            raise OutputError(None, EMBED_NEEDS) from None
        self._pyexiv2 = pyexiv2

    def caption(self, image: Path) -> str:
        """The x-default dc:description already embedded ("" when none or unreadable)."""
        try:
            with self._pyexiv2.Image(str(image)) as handle:
                return self._read(handle)
        except Exception:  # noqa: BLE001 - unreadable: embed() will report it
            return ""

    @staticmethod
    def _read(handle: Any) -> str:
        value = handle.read_xmp().get("Xmp.dc.description", {})
        return str(value.get('lang="x-default"', "")) if isinstance(value, dict) else str(value)

    def embed(self, image: Path, text: str, existing: str) -> bool:
        """Note: exiv2 rewrites the image file itself; that write is not ours to make atomic."""
        try:
            with self._pyexiv2.Image(str(image)) as handle:
                old = self._read(handle)
                if old and existing == "skip":
                    return False
                value = _append(old, text) if old and existing == "append" else text
                # The Metadata Working Group's three homes of a caption, kept equal so that
                # every photo tool reads the same text (IPTC declared UTF-8 first).
                handle.modify_xmp({"Xmp.dc.description": {'lang="x-default"': value}})
                handle.modify_iptc({"Iptc.Envelope.CharacterSet": "\x1b%G",
                                    "Iptc.Application2.Caption": value})
                handle.modify_exif({"Exif.Image.ImageDescription": value})
        except Exception as exc:  # noqa: BLE001 - exiv2 reports every failure as RuntimeError
            raise OutputError(image, f"could not embed the caption: {exc}") from None
        return True
