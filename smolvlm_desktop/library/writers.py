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
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Mapping, Sequence

from ..engine.types import Timings
from .atomic import OutputError, atomic_write_text, describe_os_error

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
    """file_name for jsonl/csv: relative to folder, forward slashes (absolute if impossible)."""
    image, base = os.path.abspath(image_path), os.path.abspath(folder)
    try:
        return Path(os.path.relpath(image, base)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(image).as_posix()


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
    """An empty file (some tools create placeholders) holds no caption."""
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

    # public API

    def has_caption(self, image_path: Path) -> bool:
        """True when every chosen format already holds a caption for this image (batch skip)."""
        image_path = Path(image_path)
        for fmt in self.formats:
            if fmt in AGGREGATE_NAMES:
                if not self._aggregate_for(fmt, image_path).has(self._key(image_path, fmt)):
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
        if fmt == "xmp":
            done = _write_xmp(target, text, self.existing)
        elif fmt == "json":
            done = _write_json_sidecar(target, image, text, meta, self.existing)
        else:
            done = _write_plain(target, text, self.existing)
        return target if done else None

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
    """The existing file's text, None if absent. Never guess at bytes we cannot decode."""
    try:
        return path.read_text(encoding="utf-8")
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
    row.update({"file_name": image.name, "text": text, "model": meta.model,
                "prompt": meta.prompt, "timings": meta.timings_dict()})
    atomic_write_text(path, json.dumps(row, ensure_ascii=False, indent=2) + "\n")
    return True


# --- jsonl and csv -----------------------------------------------------------------------------


class _Aggregate:
    """The rows of one metadata.jsonl or captions.csv, in memory, keyed by file_name.

    Lines or rows this module cannot interpret are kept verbatim: a user's file is never
    silently shortened. Loading a file that has the same file_name twice keeps the last row.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.rows: dict[str, dict[str, Any]] = {}
        self.foreign: list[Any] = []  # jsonl: raw lines; csv: rows without a file_name
        self.columns: list[str] = list(COLUMNS)
        self.dirty = False
        text = _read_text(path)
        if text:
            self._load_jsonl(text) if fmt == "jsonl" else self._load_csv(text)

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
        self.dirty = True
        return True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(self.path, describe_os_error(exc)) from None
        atomic_write_text(self.path, self._jsonl() if self.fmt == "jsonl" else self._csv())
        self.dirty = False

    # jsonl

    def _load_jsonl(self, text: str) -> None:
        for line in text.splitlines():
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
            reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
            header = reader.fieldnames or []
            if "file_name" not in header:
                raise OutputError(self.path, "the existing file has no file_name column; "
                                             "left unchanged")
            self.columns = list(header) + [c for c in COLUMNS if c not in header]
            for row in reader:
                row.pop(None, None)  # type: ignore[call-overload] - cells beyond the header
                if row.get("file_name"):
                    self.rows[row["file_name"]] = row
                else:
                    self.foreign.append(row)
        except csv.Error as exc:
            raise OutputError(self.path, f"the existing file is not valid CSV ({exc}); "
                                         "left unchanged") from None

    def _csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in [*self.rows.values(), *self.foreign]:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        return out.getvalue()


_FORMULA_STARTS = ("=", "+", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """timings (a dict) as a JSON string in its CSV cell; text that a spreadsheet would run
    as a formula gets a leading apostrophe (captions can quote text read off a hostile image,
    and file names are anyone's choice)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
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
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


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
