"""The private library: one SQLite file with what the app learned about the user's images.

What is stored: image paths with a content hash, size and mtime (never pixels), captions,
chats, and batch jobs with one row per image so that a batch killed at any moment can resume.
Everything the user can search is indexed with FTS5, kept in sync by triggers, and everything
can be forgotten for real: rows, index entries and the free pages they leave behind.

A batch job is run by one process at a time: a run claims it first (`claim_job`, an OS lock
next to the library file, see joblock.py), and a job claimed by a running process is never
offered for resuming.

Threads: one `Library` owns one connection that may be used from any thread; a lock
serialises the calls, and every call is short (one small transaction), so the window's
worker thread can mark items while the UI thread runs a search. Other processes (a CLI batch
next to the open window) are fine too: the file is in WAL mode with a busy timeout.

    with Library(paths.library_path()) as lib:
        lib.record_caption(path, "a red car", model="SmolVLM-256M", prompt="Describe.")
        hits = lib.search("red car")
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..engine.types import Timings
from ..paths import PRIVATE_FILE_MODE, make_private, printable, private_dir
from .joblock import JobClaim, claim_job, claimed_jobs, is_claimed

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
# The marks around a match in a snippet: private-use characters, which no caption or chat
# contains, so a caption such as "a sign reading [EXIT]" keeps its brackets. They are removed
# from every text before it is indexed or searched (`searchable`), so none can be forged.
SNIPPET_START, SNIPPET_END, SNIPPET_ELLIPSIS = "\ue000", "\ue001", "…"
_NOT_SEARCHABLE = str.maketrans("", "", SNIPPET_START + SNIPPET_END)
ITEM_STATES = ("pending", "done", "skipped", "failed")
JOB_STATES = ("running", "cancelled", "finished")
# How SQLite opens the file: "rwc" read, write, create. Tests set "ro" for a real read-only
# open, which is what a 0444 file or a 0555 folder gives a user who is not root.
SQLITE_OPEN_MODE = "rwc"
RESET_HINT = "run `smolvlm-desktop library reset` to keep it aside and start a new library"

# Each entry upgrades the schema from version i to i + 1. Never edit a released entry: add one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,          -- absolute, resolved
        sha256 TEXT,                        -- NULL when the file could not be read
        size INTEGER,
        mtime REAL,
        seen_at TEXT NOT NULL
    );
    CREATE TABLE captions (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at TEXT NOT NULL,
        timings TEXT                        -- JSON of Timings.as_dict()
    );
    CREATE INDEX captions_image ON captions(image_id);
    CREATE TABLE chats (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        turns TEXT NOT NULL,                -- JSON [{"role": ..., "text": ...}]
        search_text TEXT NOT NULL,          -- the turns' text only, for FTS
        created_at TEXT NOT NULL
    );
    CREATE TABLE chat_images (
        chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        PRIMARY KEY (chat_id, position)
    );
    CREATE INDEX chat_images_image ON chat_images(image_id);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        settings TEXT NOT NULL,             -- JSON of the batch settings
        state TEXT NOT NULL CHECK (state IN ('running', 'cancelled', 'finished')),
        finished_at TEXT
    );
    CREATE TABLE job_items (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        position INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'done', 'skipped', 'failed')),
        caption TEXT,                       -- set while pending = generated, files maybe written
        timings TEXT,
        error TEXT,                         -- failure or skip reason
        updated_at TEXT,
        UNIQUE (job_id, path)
    );
    CREATE INDEX job_items_order ON job_items(job_id, state, position);

    CREATE VIRTUAL TABLE captions_fts USING fts5(
        text, content='captions', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
    CREATE TRIGGER captions_ai AFTER INSERT ON captions BEGIN
        INSERT INTO captions_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER captions_ad AFTER DELETE ON captions BEGIN
        INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER captions_au AFTER UPDATE OF text ON captions BEGIN
        INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO captions_fts(rowid, text) VALUES (new.id, new.text);
    END;

    CREATE VIRTUAL TABLE chats_fts USING fts5(
        search_text, content='chats', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2');
    CREATE TRIGGER chats_ai AFTER INSERT ON chats BEGIN
        INSERT INTO chats_fts(rowid, search_text) VALUES (new.id, new.search_text);
    END;
    CREATE TRIGGER chats_ad AFTER DELETE ON chats BEGIN
        INSERT INTO chats_fts(chats_fts, rowid, search_text)
            VALUES ('delete', old.id, old.search_text);
    END;
    CREATE TRIGGER chats_au AFTER UPDATE OF search_text ON chats BEGIN
        INSERT INTO chats_fts(chats_fts, rowid, search_text)
            VALUES ('delete', old.id, old.search_text);
        INSERT INTO chats_fts(rowid, search_text) VALUES (new.id, new.search_text);
    END;
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class LibraryError(Exception):
    """The library file cannot be used (newer schema, not a database, unknown job...);
    the message says what to do. The file is never modified or wiped because of it."""


class LibraryUnusable(LibraryError):
    """The file cannot be written (read-only) or is damaged: it is not opened at all, so it is
    never written to; the app goes on without a library for this run (captions are still
    written) and the message names the way out (RESET_HINT). A read-only one can still be
    opened for reading (`Library(read_only=True)`): `read_only` says which case it is."""

    def __init__(self, message: str, read_only: bool = False) -> None:
        super().__init__(message)
        self.read_only = read_only


class ItemGone(LibraryError):
    """A batch job's image is no longer in the job (forgotten meanwhile): the batch goes on
    without recording it."""


class JobsRunning(LibraryError):
    """A forget would remove images a batch job running right now is working on."""


@dataclass(frozen=True)
class SearchHit:
    path: str  # the image (for a chat about several images: the first one)
    text: str  # the whole caption, or the chat's text
    model: str
    created_at: str
    snippet: str  # the matching words wrapped in SNIPPET_START / SNIPPET_END (not brackets)
    kind: str = "caption"  # "caption" or "chat"
    paths: tuple[str, ...] = ()  # every image of a chat (the one image of a caption)


@dataclass(frozen=True)
class CaptionRecord:
    path: str
    text: str
    model: str
    prompt: str
    created_at: str
    timings: dict[str, Any] | None


@dataclass(frozen=True)
class JobInfo:
    id: int
    created_at: str
    settings: dict[str, Any]
    state: str  # one of JOB_STATES; "running" also after a crash: resumable
    finished_at: str | None
    counts: dict[str, int]  # per item state, plus "total"

    @property
    def unfinished(self) -> bool:
        return self.state != "finished"


@dataclass(frozen=True)
class JobItem:
    path: Path
    position: int
    state: str
    caption: str | None
    timings: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class Forgotten:
    """How many rows a forget call removed (the CLI prints it)."""

    images: int = 0
    captions: int = 0
    chats: int = 0
    job_items: int = 0
    jobs: int = 0

    @property
    def total(self) -> int:
        return self.images + self.captions + self.chats + self.job_items + self.jobs


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def normalize_path(path: str | os.PathLike[str]) -> str | bytes:
    """The one spelling of a path stored in the library: absolute, symlinks resolved.

    A name that is not valid UTF-8 (a byte such as 0xff, which Python holds as a surrogate)
    cannot be SQLite text, so it is stored as its bytes (a BLOB): lossless, and `_path` turns
    it back into the same str. A prefix match (forget_folder) compares both kinds as bytes."""
    key = str(Path(path).expanduser().resolve())
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(key)
    return key


def _path(stored: str | bytes) -> str:
    """A path as stored (normalize_path) -> the str Python uses for it."""
    return os.fsdecode(stored) if isinstance(stored, bytes) else stored


def _json(value: Any) -> str:
    """JSON text that SQLite can store: a str holding a surrogate (a non-UTF-8 file name in
    the settings) is written with \\u escapes, which json.loads turns back losslessly."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, sort_keys=True)
    return text


def set_library_aside(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Rename the library file, its WAL and SHM to library-<time>.sqlite3(-wal, -shm) in the
    same folder, so that the next open starts a new library and the old one is kept whole
    (a damaged one may still be rescued with sqlite3's .recover). None if there is no file.
    Refused (LibraryError) while a batch job runs: its process still writes the old file."""
    if path is None:
        from ..paths import library_path

        path = library_path()
    path = Path(path)
    if not path.exists():
        return None
    running = claimed_jobs(path)
    if running:
        raise LibraryError(f"batch job #{running[0]} is running on this library; wait for it to "
                           "end (or stop it), then reset again")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.stem}-{stamp}{path.suffix}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.stem}-{stamp}-{n}{path.suffix}")
    try:
        for suffix in ("-wal", "-shm", ""):  # the main file last: until then it opens whole
            old = path.with_name(path.name + suffix)
            if old.exists():
                os.replace(old, aside.with_name(aside.name + suffix))
    except OSError as exc:
        raise LibraryError(f"cannot move {path} aside ({exc.strerror or exc}): make its folder "
                           f"writable (chmod u+w {path.parent}) and try again") from None
    return aside


def searchable(text: str) -> str:
    """Text as it may enter the search index: without the snippet marks (see SNIPPET_START)."""
    return text.translate(_NOT_SEARCHABLE)


def fts_query(user_text: str, prefix: bool = False) -> str | None:
    """User words -> an FTS5 query that cannot be a syntax error: every word becomes a quoted
    phrase ("red car" -> '"red" "car"': both words, any order). None when nothing is left."""
    terms = searchable(user_text).replace("\x00", " ").split()
    if not terms:
        return None
    quoted = ['"' + term.replace('"', '""') + '"' for term in terms]
    if prefix:
        quoted[-1] += "*"
    return " ".join(quoted)


def _timings_json(timings: Timings | Mapping[str, Any] | None) -> str | None:
    if timings is None:
        return None
    data = timings.as_dict() if isinstance(timings, Timings) else dict(timings)
    return json.dumps(data, sort_keys=True)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def file_facts(path: str) -> tuple[str | None, int | None, float | None]:
    """(sha256, size, mtime) of a file, or Nones when it cannot be read (moved, no access).
    Called outside any transaction: hashing a large photo must not hold the write lock."""
    try:
        stat = os.stat(path)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest(), stat.st_size, stat.st_mtime
    except OSError:
        return None, None, None


def _turn(turn: Any) -> dict[str, str]:
    """A chat turn given as Message-like object, mapping or (role, text) pair -> a dict."""
    if isinstance(turn, Mapping):
        return {"role": str(turn["role"]), "text": str(turn["text"])}
    if isinstance(turn, (tuple, list)):
        return {"role": str(turn[0]), "text": str(turn[1])}
    return {"role": str(turn.role), "text": str(turn.text)}


class Library:
    """The library file. Open it, use it from any thread, close it (or use `with`)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 read_only: bool = False) -> None:
        """read_only: open for searching and listing only (a library the user cannot write);
        nothing is created, upgraded or written, and any write fails."""
        if path is None:
            from ..paths import library_path

            path = library_path()
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            private_dir(self.path.parent)
        for file in self.files():  # found open to others: closed before anything is read
            make_private(file)
        self._lock = threading.RLock()
        self._conn = self._connect()
        try:
            if not read_only:
                self._migrate()
            elif self.schema_version != SCHEMA_VERSION:
                raise LibraryError(f"{self.path} needs an upgrade that a read-only file cannot "
                                   "take; make it writable and run any command once")
        except BaseException:
            self._conn.close()
            raise
        for file in self.files():  # the WAL and SHM exist now: all of them owner-only
            make_private(file)

    def files(self) -> list[Path]:
        """The library file and its WAL and shared-memory files, those that exist."""
        return [f for f in (self.path, *(self.path.with_name(self.path.name + s)
                                         for s in ("-wal", "-shm"))) if f.exists()]

    # --- opening ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open the file, checking before anything is written that it is whole (quick_check)
        and writable: a damaged or read-only library is refused (LibraryUnusable), untouched."""
        mode = "ro" if self.read_only else SQLITE_OPEN_MODE
        if not self.path.exists() and mode != "ro":
            # created owner-only before SQLite makes it (its WAL and SHM copy these modes)
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
            except OSError as exc:
                raise self._unusable(sqlite3.OperationalError(
                    f"unable to open database file: {exc.strerror or exc}")) from None
        uri = f"{self.path.absolute().as_uri()}?mode={mode}"
        try:
            return self._connect_uri(uri)
        except sqlite3.DatabaseError as exc:
            if not (self.read_only and "readonly" in str(exc)):
                raise self._unusable(exc) from None
        # Read-only in a folder the user cannot write: SQLite cannot make the WAL's shared-
        # memory file there, and reads such a file only as "immutable" (nobody can change it).
        try:
            return self._connect_uri(uri + "&immutable=1")
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from None

    def _connect_uri(self, uri: str) -> sqlite3.Connection:
        # isolation_level=None: we write BEGIN/COMMIT ourselves, so every transaction is
        # exactly as long as the code says (Python's implicit transactions are not).
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        try:
            self._open(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _unusable(self, exc: sqlite3.DatabaseError) -> LibraryError:
        message = str(exc)
        if "readonly" in message or "read-only" in message or "unable to open" in message:
            return LibraryUnusable(
                f"{self.path} cannot be written ({message}), so the library is off for this run "
                f"and the file was left untouched. Make it and its folder writable again, or "
                f"{RESET_HINT}.", read_only=not self.read_only)
        return LibraryUnusable(
            f"{self.path} is damaged or not a library this app can read ({message}), so the "
            f"library is off for this run and the file was left untouched; {RESET_HINT}.")

    def _open(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"{self.path} was written by a newer version of SmolVLM Desktop (library schema "
                f"{version}; this version understands up to {SCHEMA_VERSION}). It was left "
                "untouched: update the app, or point SMOLVLM_DATA_DIR elsewhere.")
        # Pages overwritten inside the file: refuse before a single write (about 50 ms for
        # 100 MB). A write would build on the damage; the user's old rows may still be rescued.
        check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {check.splitlines()[-1]}")
        if self.read_only:
            return
        conn.execute("PRAGMA journal_mode = WAL")
        # A read-only file (or folder) only fails at the first write: try one, then roll it back.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA user_version = {version}")
        finally:
            conn.execute("ROLLBACK")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")  # forgotten text does not linger in free pages
        # FULL: a mark survives a power cut too, not just a crash. It costs an fsync per mark
        # (milliseconds), next to a caption that takes a second.
        conn.execute("PRAGMA synchronous = FULL")

    def _migrate(self) -> None:
        """Bring an older (or new, empty) file up to SCHEMA_VERSION, one step per transaction."""
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[target - 1]
            try:
                self._conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;")
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction. BEGIN IMMEDIATE takes the write lock up front, so two
        writers wait (busy_timeout) instead of failing half-way with 'database is locked'."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row | tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- images, captions, chats --------------------------------------------------------

    def _image_id(self, conn: sqlite3.Connection, path: str | bytes,
                  facts: tuple[str | None, int | None, float | None]) -> int:
        sha, size, mtime = facts
        conn.execute(
            "INSERT INTO images(path, sha256, size, mtime, seen_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
            "mtime = excluded.mtime, seen_at = excluded.seen_at",
            (path, sha, size, mtime, _now()))
        return conn.execute("SELECT id FROM images WHERE path = ?", (path,)).fetchone()[0]

    def _insert_caption(self, conn: sqlite3.Connection, path: str | bytes,
                        facts: tuple[str | None, int | None, float | None], text: str,
                        model: str, prompt: str, timings_json: str | None) -> int:
        image_id = self._image_id(conn, path, facts)
        cursor = conn.execute(
            "INSERT INTO captions(image_id, model, prompt, text, created_at, timings) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (image_id, model, prompt, searchable(text), _now(), timings_json))
        return int(cursor.lastrowid)

    def record_caption(self, path: str | os.PathLike[str], text: str, model: str, prompt: str,
                       timings: Timings | Mapping[str, Any] | None = None) -> int:
        """Remember one caption (a chat answer or a CLI caption); returns its id."""
        key = normalize_path(path)
        facts = file_facts(key)
        with self._write() as conn:
            return self._insert_caption(conn, key, facts, text, model, prompt,
                                        _timings_json(timings))

    def captions_for(self, path: str | os.PathLike[str]) -> list[CaptionRecord]:
        """Every caption of one image, oldest first."""
        rows = self._read(
            "SELECT i.path, c.text, c.model, c.prompt, c.created_at, c.timings FROM captions c "
            "JOIN images i ON i.id = c.image_id WHERE i.path = ? ORDER BY c.id",
            (normalize_path(path),))
        return [CaptionRecord(_path(r[0]), r[1], r[2], r[3], r[4], _loads(r[5])) for r in rows]

    def record_chat(self, paths: Sequence[str | os.PathLike[str]], turns: Sequence[Any],
                    model: str, chat_id: int | None = None) -> int:
        """Remember a conversation about some images; returns its id.

        turns: Messages, {"role", "text"} mappings or (role, text) pairs. Pass the chat_id of
        an earlier call to replace that chat's turns as the conversation grows (one row per
        conversation, not one per answer)."""
        keys = [normalize_path(p) for p in paths]
        facts = [file_facts(k) for k in keys]
        clean = [_turn(t) for t in turns]
        turns_json = _json(clean)
        search_text = searchable("\n".join(t["text"] for t in clean))
        with self._write() as conn:
            if chat_id is not None:
                updated = conn.execute(
                    "UPDATE chats SET turns = ?, search_text = ?, model = ? WHERE id = ?",
                    (turns_json, search_text, model, chat_id)).rowcount
                if updated:
                    return chat_id
            chat_id = int(conn.execute(
                "INSERT INTO chats(model, turns, search_text, created_at) VALUES (?, ?, ?, ?)",
                (model, turns_json, search_text, _now())).lastrowid)
            for position, (key, fact) in enumerate(zip(keys, facts)):
                conn.execute("INSERT INTO chat_images(chat_id, image_id, position) VALUES (?, ?, ?)",
                             (chat_id, self._image_id(conn, key, fact), position))
            return chat_id

    def chat_turns(self, chat_id: int) -> list[dict[str, str]]:
        rows = self._read("SELECT turns FROM chats WHERE id = ?", (chat_id,))
        if not rows:
            raise LibraryError(f"there is no chat {chat_id} in the library")
        return json.loads(rows[0][0])

    # --- search -------------------------------------------------------------------------

    def search(self, query: str, limit: int = 50, *, prefix: bool = False) -> list[SearchHit]:
        """Captions and chats containing every word of `query`, best match first.

        The words are quoted, so nothing a user types is FTS syntax. prefix=True lets the
        last word match as a prefix (search as you type)."""
        match = fts_query(query, prefix)
        if match is None or limit < 1:
            return []
        snippet = f"'{SNIPPET_START}', '{SNIPPET_END}', '{SNIPPET_ELLIPSIS}', 12"
        rows = self._read(
            f"""
            SELECT 'caption', c.id, i.path, c.text, c.model, c.created_at,
                   snippet(captions_fts, 0, {snippet}), bm25(captions_fts) AS rank
              FROM captions_fts JOIN captions c ON c.id = captions_fts.rowid
              JOIN images i ON i.id = c.image_id
             WHERE captions_fts MATCH ?
            UNION ALL
            SELECT 'chat', ch.id, '', ch.search_text, ch.model, ch.created_at,
                   snippet(chats_fts, 0, {snippet}), bm25(chats_fts) AS rank
              FROM chats_fts JOIN chats ch ON ch.id = chats_fts.rowid
             WHERE chats_fts MATCH ?
             ORDER BY rank, 6 DESC
             LIMIT ?""", (match, match, limit))
        return [self._hit(row) for row in rows]

    def _hit(self, row: tuple) -> SearchHit:
        kind, row_id, path, text, model, created_at, snippet, _ = row
        path = _path(path)
        paths: tuple[str, ...] = (path,)
        if kind == "chat":
            paths = tuple(_path(r[0]) for r in self._read(
                "SELECT i.path FROM chat_images ci JOIN images i ON i.id = ci.image_id "
                "WHERE ci.chat_id = ? ORDER BY ci.position", (row_id,)))
            path = paths[0] if paths else ""
        return SearchHit(path, text, model, created_at, snippet, kind, paths)

    # --- forgetting ---------------------------------------------------------------------

    def forget_image(self, path: str | os.PathLike[str]) -> Forgotten:
        """Remove one image: its row, captions, chats it is part of, and its job items."""
        key = normalize_path(path)
        return self._forget("path = ?", (key,))

    def forget_folder(self, folder: str | os.PathLike[str]) -> Forgotten:
        """Remove every image at or under `folder` (prefix match on whole path parts, so
        /photos does not touch /photos2). Compared as bytes: paths stored as text and as
        BLOBs (see normalize_path) alike."""
        key = os.fsencode(_path(normalize_path(folder)))
        under = key.rstrip(os.fsencode(os.sep)) + os.fsencode(os.sep)
        return self._forget("(CAST(path AS BLOB) = ? OR substr(CAST(path AS BLOB), 1, ?) = ?)",
                            (key, len(under), under))

    def forget_all(self) -> Forgotten:
        """Empty the library: every image, caption, chat and job."""
        return self._forget("1", (), everything=True)

    def _forget(self, where: str, params: tuple, everything: bool = False) -> Forgotten:
        """JobsRunning, removing nothing, if a job that a process runs now has such images:
        its run would find them gone. A job that starts later is made after this forget."""
        with self._write() as conn:
            self._refuse_running_jobs(conn, where, params)
            image_ids = f"SELECT id FROM images WHERE {where}"
            chats = conn.execute(
                f"DELETE FROM chats WHERE id IN (SELECT chat_id FROM chat_images "
                f"WHERE image_id IN ({image_ids}))", params).rowcount
            captions = conn.execute(
                f"DELETE FROM captions WHERE image_id IN ({image_ids})", params).rowcount
            images = conn.execute(f"DELETE FROM images WHERE {where}", params).rowcount
            items = conn.execute(f"DELETE FROM job_items WHERE {where}", params).rowcount
            jobs_where = "1" if everything else \
                "NOT EXISTS (SELECT 1 FROM job_items WHERE job_id = jobs.id)"
            jobs = conn.execute(f"DELETE FROM jobs WHERE {jobs_where}").rowcount if (
                everything or items) else 0
            if chats or captions or everything:
                # An FTS5 delete only adds a tombstone; merging the segments rewrites the index
                # without the forgotten words (secure_delete then zeroes the old pages).
                conn.execute("INSERT INTO captions_fts(captions_fts) VALUES ('optimize')")
                conn.execute("INSERT INTO chats_fts(chats_fts) VALUES ('optimize')")
        self._checkpoint()
        return Forgotten(images, captions, chats, items, jobs)

    def _refuse_running_jobs(self, conn: sqlite3.Connection, where: str, params: tuple) -> None:
        running = [job_id for (job_id,) in conn.execute(
            f"SELECT DISTINCT job_id FROM job_items WHERE {where} AND job_id IN "
            "(SELECT id FROM jobs WHERE state != 'finished') ORDER BY job_id", params)
            if self.job_claimed(job_id)]
        if running:
            jobs = ", ".join(f"#{job_id}" for job_id in running)
            raise JobsRunning(
                f"batch job {jobs} is captioning some of these images right now; nothing was "
                "erased. Wait for it to end (or stop it), then forget them again.")

    def _checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it, so the pre-forget pages that
        still sit in the WAL are gone too. Another open reader can delay this; the next
        checkpoint then finishes the job."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    # --- batch jobs -----------------------------------------------------------------------

    def create_job(self, settings: Mapping[str, Any], paths: Sequence[str | os.PathLike[str]],
                   *, on_created: Callable[[int], None] | None = None) -> int:
        """A new job with every path pending, in order (duplicates kept once).

        on_created(job_id) runs inside the transaction that creates the job, before any other
        process can see it: the batch runner claims the job there, so nobody can resume it
        first. If it raises, the job is not created."""
        keys = list(dict.fromkeys(normalize_path(p) for p in paths))
        settings_json = _json(dict(settings))
        with self._write() as conn:
            job_id = int(conn.execute(
                "INSERT INTO jobs(created_at, settings, state) VALUES (?, ?, 'running')",
                (_now(), settings_json)).lastrowid)
            conn.executemany(
                "INSERT INTO job_items(job_id, path, position) VALUES (?, ?, ?)",
                [(job_id, key, position) for position, key in enumerate(keys)])
            if on_created is not None:
                on_created(job_id)
        return job_id

    def claim_job(self, job_id: int) -> JobClaim:
        """Claim the job for one run (hold it until claim.release()); JobBusy if another
        process (or another run in this one) is running it."""
        return claim_job(self.path, job_id)

    def job_claimed(self, job_id: int) -> bool:
        """Is some process running this job right now? A snapshot: claim_job decides."""
        return is_claimed(self.path, job_id)

    def job(self, job_id: int) -> JobInfo:
        rows = self._read("SELECT id, created_at, settings, state, finished_at FROM jobs "
                          "WHERE id = ?", (job_id,))
        if not rows:
            raise LibraryError(f"there is no batch job {job_id} in the library")
        return self._job_info(rows[0])

    def _job_info(self, row: tuple) -> JobInfo:
        counts = dict.fromkeys(ITEM_STATES, 0)
        for state, n in self._read("SELECT state, count(*) FROM job_items WHERE job_id = ? "
                                   "GROUP BY state", (row[0],)):
            counts[state] = n
        counts["total"] = sum(counts.values())
        return JobInfo(row[0], row[1], json.loads(row[2]), row[3], row[4], counts)

    def job_status(self, job: JobInfo) -> str:
        """The state to show a person. The stored state says "running" from the start of a
        run until it ends normally, so a run that died (killed, Ctrl+C, a full disk) still
        says it: the claim tells. "running": a process runs it now; "interrupted": stopped
        before its end, resumable; "cancelled": stopped on request, resumable; "failed":
        finished, but some images failed; "finished"."""
        if job.state == "running":
            return "running" if self.job_claimed(job.id) else "interrupted"
        if job.state == "finished" and job.counts.get("failed"):
            return "failed"
        return job.state

    def list_jobs(self) -> list[JobInfo]:
        """Every job, newest first."""
        rows = self._read("SELECT id, created_at, settings, state, finished_at FROM jobs "
                          "ORDER BY id DESC")
        return [self._job_info(r) for r in rows]

    def latest_unfinished_job(self) -> JobInfo | None:
        """The newest job that was cancelled or never finished (killed, crashed) and that no
        process is running now: the one to offer to resume. A job another process holds is
        left out (its state says "running" too), since resuming it would only be refused."""
        for row in self._unfinished_rows():
            if not self.job_claimed(row[0]):
                return self._job_info(row)
        return None

    def unfinished_jobs_like(self, settings: Mapping[str, Any],
                             paths: Sequence[str | os.PathLike[str]]) -> list[JobInfo]:
        """Unfinished jobs with exactly these settings and images, newest first: the same
        command run again. Claimed or not: callers look (job_claimed) and decide."""
        wanted = json.loads(json.dumps(dict(settings)))  # tuples -> lists, as stored
        keys = {normalize_path(p) for p in paths}
        return [self._job_info(row) for row in self._unfinished_rows()
                if json.loads(row[2]) == wanted and self._job_paths(row[0]) == keys]

    def unfinished_jobs_writing(self, paths: Sequence[str | os.PathLike[str]],
                                outputs: Sequence[str]) -> list[tuple[JobInfo, int]]:
        """Unfinished jobs that write one of these output formats for some of these images,
        with how many images they share, newest first: two such runs at once would write the
        same caption files (a skip, read then written, races the other run's write)."""
        keys = {normalize_path(p) for p in paths}
        formats = set(outputs)
        clashes = []
        for row in self._unfinished_rows():
            if not formats & set(json.loads(row[2]).get("outputs") or ()):
                continue
            shared = len(self._job_paths(row[0]) & keys)
            if shared:
                clashes.append((self._job_info(row), shared))
        return clashes

    def _unfinished_rows(self) -> list[sqlite3.Row | tuple]:
        return self._read("SELECT id, created_at, settings, state, finished_at FROM jobs "
                          "WHERE state != 'finished' ORDER BY id DESC")

    def _job_paths(self, job_id: int) -> set[str]:
        return {r[0] for r in self._read("SELECT path FROM job_items WHERE job_id = ?", (job_id,))}  # as stored

    def pending_items(self, job_id: int) -> list[Path]:
        rows = self._read("SELECT path FROM job_items WHERE job_id = ? AND state = 'pending' "
                          "ORDER BY position", (job_id,))
        return [Path(_path(r[0])) for r in rows]

    def job_items(self, job_id: int) -> list[JobItem]:
        rows = self._read("SELECT path, position, state, caption, timings, error FROM job_items "
                          "WHERE job_id = ? ORDER BY position", (job_id,))
        return [JobItem(Path(_path(r[0])), r[1], r[2], r[3], _loads(r[4]), r[5]) for r in rows]

    def job_item(self, job_id: int, path: str | os.PathLike[str]) -> JobItem:
        rows = self._read("SELECT path, position, state, caption, timings, error FROM job_items "
                          "WHERE job_id = ? AND path = ?", (job_id, normalize_path(path)))
        if not rows:
            raise ItemGone(f"{printable(path)} is not part of batch job {job_id}")
        r = rows[0]
        return JobItem(Path(_path(r[0])), r[1], r[2], r[3], _loads(r[4]), r[5])

    def stage_caption(self, job_id: int, path: str | os.PathLike[str], caption: str,
                      timings: Timings | Mapping[str, Any] | None) -> None:
        """Remember a generated caption before its files are written (the item stays pending).

        If the process dies between writing the files and mark_done, the resumed batch finds
        the caption here and finishes that image with the same text, instead of generating
        a different one and writing a second copy."""
        self._update_item(job_id, path, "state = 'pending', caption = ?, timings = ?",
                          (caption, _timings_json(timings)), only_pending=True)

    def mark_done(self, job_id: int, path: str | os.PathLike[str], caption: str,
                  timings: Timings | Mapping[str, Any] | None = None, *,
                  model: str | None = None, prompt: str | None = None) -> bool:
        """The image is finished. With model and prompt, the caption also enters the library
        (captions + search) in the same transaction: a kill can never leave one without the
        other. Returns False, changing nothing, if the item was already finished."""
        key = normalize_path(path)
        facts = file_facts(key) if model is not None else (None, None, None)
        timings_json = _timings_json(timings)
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE job_items SET state = 'done', caption = ?, timings = ?, error = NULL, "
                "updated_at = ? WHERE job_id = ? AND path = ? AND state = 'pending'",
                (caption, timings_json, _now(), job_id, key)).rowcount
            if not changed:
                self._require_item(conn, job_id, key)
                return False
            if model is not None:
                self._insert_caption(conn, key, facts, caption, model, prompt or "", timings_json)
            return True

    def mark_skipped(self, job_id: int, path: str | os.PathLike[str], reason: str) -> bool:
        return self._update_item(job_id, path, "state = 'skipped', error = ?", (printable(reason),))

    def mark_failed(self, job_id: int, path: str | os.PathLike[str], error: str) -> bool:
        return self._update_item(job_id, path, "state = 'failed', error = ?", (printable(error),))

    def _update_item(self, job_id: int, path: str | os.PathLike[str], assignments: str,
                     params: tuple, only_pending: bool = True) -> bool:
        key = normalize_path(path)
        with self._write() as conn:
            changed = conn.execute(
                f"UPDATE job_items SET {assignments}, updated_at = ? WHERE job_id = ? AND path = ?"
                + (" AND state = 'pending'" if only_pending else ""),
                (*params, _now(), job_id, key)).rowcount
            if not changed:
                self._require_item(conn, job_id, key)
            return bool(changed)

    @staticmethod
    def _require_item(conn: sqlite3.Connection, job_id: int, key: str | bytes) -> None:
        if conn.execute("SELECT 1 FROM job_items WHERE job_id = ? AND path = ?",
                        (job_id, key)).fetchone() is None:
            raise ItemGone(f"{printable(_path(key))} is not part of batch job {job_id}")

    def finish_job(self, job_id: int, state: str) -> None:
        """Set the job's state: "finished", "cancelled" (resumable) or "running" (resumed)."""
        if state not in JOB_STATES:
            raise ValueError(f"job state must be one of {JOB_STATES}, not {state!r}")
        finished_at = _now() if state == "finished" else None
        with self._write() as conn:
            if not conn.execute("UPDATE jobs SET state = ?, finished_at = ? WHERE id = ?",
                                (state, finished_at, job_id)).rowcount:
                raise LibraryError(f"there is no batch job {job_id} in the library")
