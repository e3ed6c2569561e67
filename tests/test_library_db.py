"""The private library on real SQLite files: schema, search, forgetting for real, jobs."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from smolvlm_desktop.engine.types import Timings
from smolvlm_desktop.library import db as dbmod
from smolvlm_desktop.library.db import (SNIPPET_END, SNIPPET_START, Library, LibraryError,
                                        fts_query)


@pytest.fixture
def lib(tmp_path: Path):
    with Library(tmp_path / "library.sqlite3") as library:
        yield library


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection for looking behind the Library's back (always closed by the caller)."""
    return sqlite3.connect(path)


def file_bytes(db_path: Path) -> bytes:
    """The database file and its WAL, where forgotten text could linger."""
    wal = db_path.with_name(db_path.name + "-wal")
    return db_path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_default_location_is_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLVLM_DATA_DIR", str(tmp_path / "data"))
    with Library() as library:
        assert library.path == tmp_path / "data" / "library.sqlite3"
    assert (tmp_path / "data" / "library.sqlite3").is_file()


def test_schema_wal_foreign_keys_and_version(lib: Library) -> None:
    assert lib.schema_version == dbmod.SCHEMA_VERSION
    with closing(raw(lib.path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"images", "captions", "chats", "chat_images", "jobs", "job_items",
                "captions_fts", "chats_fts"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        image_columns = {r[1] for r in conn.execute("PRAGMA table_info(images)")}
        assert image_columns == {"id", "path", "sha256", "size", "mtime", "seen_at"}  # no pixels
    assert lib._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert lib._conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert lib._conn.execute("PRAGMA busy_timeout").fetchone()[0] == dbmod.BUSY_TIMEOUT_MS


def test_record_caption_keeps_hash_size_and_timings(lib: Library, tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"not really a jpeg, but bytes to hash")
    lib.record_caption(image, "a dog", "tiny", "Describe.", Timings(decode_ms=12.5, new_tokens=3))
    with closing(raw(lib.path)) as conn:
        sha, size = conn.execute("SELECT sha256, size FROM images").fetchone()
    assert sha == hashlib.sha256(image.read_bytes()).hexdigest() and size == image.stat().st_size
    (record,) = lib.captions_for(image)
    assert (record.text, record.model, record.prompt) == ("a dog", "tiny", "Describe.")
    assert record.timings["decode_ms"] == 12.5 and record.timings["new_tokens"] == 3


def test_missing_image_file_is_recorded_without_hash(lib: Library, tmp_path: Path) -> None:
    lib.record_caption(tmp_path / "gone.png", "text", "m", "p")
    with closing(raw(lib.path)) as conn:
        assert conn.execute("SELECT sha256, size FROM images").fetchone() == (None, None)


# --- search ----------------------------------------------------------------------------


def captions(lib: Library, tmp_path: Path, texts: dict[str, str]) -> None:
    for name, text in texts.items():
        lib.record_caption(tmp_path / name, text, "tiny", "Describe.")


def test_search_finds_all_words_in_any_order(lib: Library, tmp_path: Path) -> None:
    captions(lib, tmp_path, {"a.jpg": "A red sports car by the sea", "b.jpg": "car, painted red",
                             "c.jpg": "a red apple", "d.jpg": "a blue car"})
    found = {Path(h.path).name for h in lib.search("red car")}
    assert found == {"a.jpg", "b.jpg"}
    assert {Path(h.path).name for h in lib.search("CAR red")} == found
    hit = lib.search("apple")[0]
    assert hit.text == "a red apple" and hit.model == "tiny" and hit.kind == "caption"
    assert hit.snippet == f"a red {SNIPPET_START}apple{SNIPPET_END}" and hit.created_at


def test_brackets_in_a_caption_are_text_and_only_the_match_is_marked(lib: Library,
                                                                      tmp_path: Path) -> None:
    text = "a sign reading [EXIT] above a door"
    captions(lib, tmp_path, {"sign.jpg": text})
    for hit in lib.search("door") + lib.search("exit"):  # the marks are not part of the text
        assert hit.snippet.replace(SNIPPET_START, "").replace(SNIPPET_END, "") == text
    (hit,) = lib.search("door")
    assert hit.snippet == f"a sign reading [EXIT] above a {SNIPPET_START}door{SNIPPET_END}"
    (hit,) = lib.search("exit")
    assert hit.snippet == f"a sign reading [{SNIPPET_START}EXIT{SNIPPET_END}] above a door"


def test_snippet_marks_cannot_be_forged_by_a_caption_or_a_chat(lib: Library,
                                                                tmp_path: Path) -> None:
    forged = f"a {SNIPPET_START}fake{SNIPPET_END} mark on a wall"
    lib.record_caption(tmp_path / "a.jpg", forged, "tiny", "Describe.")
    lib.record_chat([tmp_path / "b.jpg"], [("user", "What is it?"), ("assistant", forged)], "tiny")
    hits = lib.search("wall")
    assert len(hits) == 2
    for hit in hits:
        assert SNIPPET_START not in hit.text and SNIPPET_END not in hit.text
        assert hit.snippet.count(SNIPPET_START) == hit.snippet.count(SNIPPET_END) == 1
        assert f"{SNIPPET_START}wall{SNIPPET_END}" in hit.snippet.lower()
    assert lib.captions_for(tmp_path / "a.jpg")[0].text == "a fake mark on a wall"
    assert lib.search(SNIPPET_START + SNIPPET_END) == []
    assert len(lib.search(f"{SNIPPET_START}fake")) == 2  # a mark typed in a query is dropped


def test_search_limit_and_prefix_and_accents(lib: Library, tmp_path: Path) -> None:
    captions(lib, tmp_path, {f"{i}.jpg": f"a cat number {i}" for i in range(5)})
    captions(lib, tmp_path, {"cafe.jpg": "Un café au lait", "cart.jpg": "a shopping cartwheel"})
    assert len(lib.search("cat", limit=3)) == 3
    assert lib.search("cat", limit=0) == []
    assert lib.search("cart") == []  # whole words...
    assert {Path(h.path).name for h in lib.search("cart", prefix=True)} == {"cart.jpg"}  # ...or not
    assert [Path(h.path).name for h in lib.search("cafe")] == ["cafe.jpg"]


@pytest.mark.parametrize("query", [
    '"', '""', "red\"car", "'", "red OR", "AND", "NOT blue", "NEAR(red car)", "*", "red*",
    "text:red", "-red", "^red", "(red", "red)", "{red}", "col:", "😀", "\x00", "   ", "",
    "red\" OR \"blue", "%_\\", "a" * 5000,
])
def test_odd_queries_never_break_fts_syntax(lib: Library, tmp_path: Path, query: str) -> None:
    captions(lib, tmp_path, {"a.jpg": "a red car", "b.jpg": "a blue boat"})
    hits = lib.search(query)
    assert "b.jpg" not in {Path(h.path).name for h in hits}  # "OR" is a word, not an operator


def test_quoted_words_are_words(lib: Library, tmp_path: Path) -> None:
    captions(lib, tmp_path, {"a.jpg": "Don't panic: the \"red\" car", "b.jpg": "red and blue"})
    assert {Path(h.path).name for h in lib.search('"red" car')} == {"a.jpg"}
    assert {Path(h.path).name for h in lib.search("don't")} == {"a.jpg"}
    assert {Path(h.path).name for h in lib.search("red AND blue")} == {"b.jpg"}
    assert fts_query('say "hi"') == '"say" """hi"""'
    assert fts_query(" \t ") is None


def test_chats_are_searchable_and_grow_in_place(lib: Library, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    chat = lib.record_chat([a, b], [("user", "What is here?"), ("assistant", "Two llamas")], "tiny")
    (hit,) = lib.search("llamas")
    assert hit.kind == "chat" and hit.path == str(a) and hit.paths == (str(a), str(b))
    assert "user" not in hit.text  # roles are not indexed: searching "user" finds nothing
    assert lib.search("user") == []
    turns = [{"role": "user", "text": "What is here?"}, {"role": "assistant", "text": "Alpacas"}]
    assert lib.record_chat([a, b], turns, "tiny", chat_id=chat) == chat
    assert lib.search("llamas") == [] and len(lib.search("alpacas")) == 1
    assert lib.chat_turns(chat) == turns


# --- forgetting ------------------------------------------------------------------------


def fts_terms(db_path: Path) -> set[str]:
    """Every term in both FTS indexes, read through fts5vocab."""
    with closing(raw(db_path)) as conn:
        terms: set[str] = set()
        for table in ("captions_fts", "chats_fts"):
            conn.execute(f"CREATE VIRTUAL TABLE temp.v_{table} USING fts5vocab(main, {table}, row)")
            terms |= {r[0] for r in conn.execute(f"SELECT term FROM temp.v_{table}")}
        return terms


def filler(lib: Library, tmp_path: Path, n: int = 150) -> None:
    """Enough other captions that the FTS index spans several pages and segments."""
    captions(lib, tmp_path / "other", {f"{i}.jpg": f"ordinary filler word{i}" for i in range(n)})


def test_forget_image_removes_rows_index_and_bytes(lib: Library, tmp_path: Path) -> None:
    secret, keep = tmp_path / "secret.jpg", tmp_path / "keep.jpg"
    filler(lib, tmp_path)
    lib.record_caption(secret, "patient quokkaphant lesion", "tiny", "Describe.")
    lib.record_chat([secret, keep], [("user", "q"), ("assistant", "zebracorn scar")], "tiny")
    lib.record_caption(keep, "a kept caption", "tiny", "Describe.")
    filler(lib, tmp_path / "more")
    assert b"quokkaphant" in file_bytes(lib.path)

    gone = lib.forget_image(secret)

    assert (gone.images, gone.captions, gone.chats) == (1, 1, 1)
    assert lib.search("quokkaphant") == [] and lib.search("zebracorn") == []
    assert not {"quokkaphant", "zebracorn", "lesion"} & fts_terms(lib.path)
    data = file_bytes(lib.path)
    for word in (b"quokkaphant", b"zebracorn", b"lesion", str(secret).encode()):
        assert word not in data, word
    assert len(lib.search("kept")) == 1 and len(lib.search("filler")) == 50
    assert lib.forget_image(secret).total == 0


def test_forget_folder_takes_everything_under_it_and_nothing_beside(lib: Library, tmp_path: Path) -> None:
    photos, photos2 = tmp_path / "photos", tmp_path / "photos2"
    captions(lib, photos, {"a.jpg": "alpha one", "sub/b.jpg": "alpha two"})
    captions(lib, photos2, {"c.jpg": "alpha three"})
    job = lib.create_job({}, [photos / "a.jpg", photos2 / "c.jpg"])
    gone = lib.forget_folder(photos)
    assert (gone.images, gone.captions, gone.job_items, gone.jobs) == (2, 2, 1, 0)
    assert [Path(h.path) for h in lib.search("alpha")] == [photos2 / "c.jpg"]
    assert lib.pending_items(job) == [photos2 / "c.jpg"]
    assert lib.forget_folder(photos2).jobs == 1  # its last item gone: the job goes too
    assert lib.list_jobs() == []


def test_forget_all_empties_every_table_and_index(lib: Library, tmp_path: Path) -> None:
    filler(lib, tmp_path)
    lib.record_chat([tmp_path / "x.jpg"], [("user", "zebracorn?")], "tiny")
    job = lib.create_job({"prompt": "Describe."}, [tmp_path / "x.jpg"])
    lib.mark_done(job, tmp_path / "x.jpg", "a zebracorn", None, model="tiny", prompt="Describe.")
    gone = lib.forget_all()
    assert gone.images == 151 and gone.captions == 151 and gone.chats == 1 and gone.jobs == 1
    with closing(raw(lib.path)) as conn:
        for table in ("images", "captions", "chats", "chat_images", "jobs", "job_items"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    assert fts_terms(lib.path) == set()
    data = file_bytes(lib.path)
    assert b"zebracorn" not in data and b"word42" not in data


# --- schema versions -------------------------------------------------------------------


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite3"
    with Library(path) as library:
        library.record_caption(tmp_path / "a.jpg", "precious caption", "m", "p")
    with closing(raw(path)) as conn:
        conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
        conn.commit()
    before = path.read_bytes()
    with pytest.raises(LibraryError, match="newer version"):
        Library(path)
    assert path.read_bytes() == before
    with closing(raw(path)) as conn:
        assert conn.execute("SELECT text FROM captions").fetchall() == [("precious caption",)]


def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite3"
    path.write_bytes(b"my notes, not sqlite" * 100)
    with pytest.raises(LibraryError, match="left untouched"):
        Library(path)
    assert path.read_bytes() == b"my notes, not sqlite" * 100


def test_a_failed_migration_rolls_back_to_the_old_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken future migration (patched in: the real ones cannot be made to fail) must leave
    the v1 file and its data as they were."""
    path = tmp_path / "library.sqlite3"
    with Library(path) as library:
        library.record_caption(tmp_path / "a.jpg", "kept", "m", "p")
    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS + (
        "CREATE TABLE extra (x); INSERT INTO captions(id) VALUES ('no such image');",))
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", 2)
    with pytest.raises(sqlite3.IntegrityError):
        Library(path)
    with closing(raw(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
        assert conn.execute("SELECT text FROM captions").fetchall() == [("kept",)]


# --- jobs ------------------------------------------------------------------------------


def test_jobs_items_and_marks(lib: Library, tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.jpg" for i in range(5)]
    job = lib.create_job({"prompt": "Describe.", "outputs": ["txt"]}, paths + [paths[0]])
    info = lib.job(job)
    assert info.settings == {"prompt": "Describe.", "outputs": ["txt"]} and info.state == "running"
    assert info.counts == {"pending": 5, "done": 0, "skipped": 0, "failed": 0, "total": 5}
    assert lib.pending_items(job) == paths

    assert lib.mark_done(job, paths[0], "cap 0", Timings(decode_ms=5), model="tiny", prompt="Describe.")
    assert lib.mark_skipped(job, paths[1], "a caption already exists")
    assert lib.mark_failed(job, paths[2], "not an image")
    lib.stage_caption(job, paths[3], "staged", {"decode_ms": 1})
    assert lib.pending_items(job) == [paths[3], paths[4]]
    assert lib.job_item(job, paths[3]).caption == "staged"

    items = {i.path.name: i for i in lib.job_items(job)}
    assert items["0.jpg"].state == "done" and items["0.jpg"].timings["decode_ms"] == 5
    assert (items["1.jpg"].state, items["1.jpg"].error) == ("skipped", "a caption already exists")
    assert (items["2.jpg"].state, items["2.jpg"].error) == ("failed", "not an image")
    assert [c.text for c in lib.captions_for(paths[0])] == ["cap 0"]
    assert len(lib.search("cap")) == 1


def test_marks_are_idempotent_and_never_duplicate_captions(lib: Library, tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    job = lib.create_job({}, [image])
    assert lib.mark_done(job, image, "once", None, model="m", prompt="p")
    assert not lib.mark_done(job, image, "twice", None, model="m", prompt="p")
    assert not lib.mark_failed(job, image, "late error")
    assert [c.text for c in lib.captions_for(image)] == ["once"]
    assert lib.job_item(job, image).state == "done"
    with pytest.raises(LibraryError, match="not part of batch job"):
        lib.mark_done(job, tmp_path / "other.jpg", "x")
    with pytest.raises(LibraryError, match="no batch job"):
        lib.job(job + 100)


def test_job_states_and_latest_unfinished(lib: Library, tmp_path: Path) -> None:
    first = lib.create_job({"n": 1}, [tmp_path / "a.jpg"])
    second = lib.create_job({"n": 2}, [tmp_path / "b.jpg"])
    assert [j.id for j in lib.list_jobs()] == [second, first]
    assert lib.latest_unfinished_job().id == second
    lib.finish_job(second, "finished")
    assert lib.job(second).finished_at is not None and not lib.job(second).unfinished
    assert lib.latest_unfinished_job().id == first
    lib.finish_job(first, "cancelled")
    assert lib.latest_unfinished_job().id == first  # cancelled jobs can be resumed
    lib.finish_job(first, "finished")
    assert lib.latest_unfinished_job() is None
    with pytest.raises(ValueError):
        lib.finish_job(first, "exploded")


def test_one_library_shared_by_two_threads_and_a_second_connection(lib: Library, tmp_path: Path) -> None:
    """The worker marks items while the UI thread searches; a CLI process writes alongside."""
    paths = [tmp_path / f"{i}.jpg" for i in range(60)]
    job = lib.create_job({}, paths)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i, path in enumerate(paths):
                lib.mark_done(job, path, f"caption word{i}", None, model="m", prompt="p")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    with Library(lib.path) as other:  # a second connection, as another process would have
        for i in range(60):
            lib.search("caption")
            other.record_caption(tmp_path / "cli" / f"{i}.jpg", "from the cli", "m", "p")
    thread.join()
    assert errors == []
    assert lib.job(job).counts["done"] == 60
    assert len(lib.search("caption", limit=100)) == 60 and len(lib.search("cli", limit=100)) == 60
