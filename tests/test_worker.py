"""The engine worker on the tiny real model: synchronously (Picard-style) and in its QThread."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from smolvlm_desktop.engine.types import GenerationSettings  # noqa: E402
from smolvlm_desktop.worker import (BatchJob, ChatJob, ChatTurn, EngineWorker, ModelSpec,  # noqa: E402
                                    WorkerThread)

from ui_helpers import TIMEOUT_MS, Gate, make_image  # noqa: E402


class Recorder:
    """Records every worker signal with its arguments (PySide6 has no all_signals_and_args)."""

    NAMES = ("model_state", "job_started", "token", "chat_finished", "image_started", "image_done",
             "image_skipped", "progress", "batch_finished", "error", "job_finished", "measured")

    def __init__(self, worker: EngineWorker) -> None:
        self.events: list[tuple] = []
        for name in self.NAMES:
            getattr(worker, name).connect(lambda *args, n=name: self.events.append((n, *args)))

    def of(self, name: str) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == name]


def chat(image: Path, text: str = "Describe this image.", max_new_tokens: int = 6) -> ChatJob:
    return ChatJob(turns=[ChatTurn("user", text, (str(image),))],
                   settings=GenerationSettings(max_new_tokens=max_new_tokens))


@pytest.fixture
def spec(tiny_model_dir: Path) -> ModelSpec:
    return ModelSpec(str(tiny_model_dir), variant="fp32", provider="cpu", threads=1, demo=True)


def test_synchronous_chat_streams_tokens_then_the_result(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    worker = EngineWorker(synchronous=True)
    rec = Recorder(worker)
    worker.set_model(spec)
    job = worker.submit(chat(make_image(tmp_path / "a.png")))
    states = [s[0] for s in rec.of("model_state")]
    assert states == ["loading", "ready"]
    assert rec.of("model_state")[-1][3] == {}, "fallback notes: none on a plain CPU load"
    (job_id, result), = rec.of("chat_finished")
    assert job_id == job.job_id
    assert "".join(t[1] for t in rec.of("token")) == result.text
    assert result.stop_reason in ("stop_token", "max_tokens")
    assert rec.events[-1] == ("job_finished", job.job_id)
    assert rec.of("error") == []



def test_a_chat_answer_is_measured_before_it_is_reported_finished(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    """Whoever reacts to chat_finished (the window's batch-time estimate, a test waiting for the
    chat to be idle) must find the answer's measurement already sent: across threads the two
    queued signals arrive in the order they were emitted."""
    worker = EngineWorker(synchronous=True)
    rec = Recorder(worker)
    worker.set_model(spec)
    worker.submit(chat(make_image(tmp_path / "a.png", size=(640, 640))))
    names = [e[0] for e in rec.events if e[0] in ("measured", "chat_finished")]
    assert names == ["measured", "chat_finished"]


def test_a_bad_image_is_reported_with_its_path(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    worker = EngineWorker(synchronous=True)
    rec = Recorder(worker)
    worker.set_model(spec)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    job = worker.submit(chat(bad))
    (job_id, path, reason), = rec.of("error")
    assert (job_id, path) == (job.job_id, str(bad)) and reason
    assert rec.of("chat_finished") == []


def test_a_model_folder_that_cannot_load_gives_an_error_state(qtbot, tmp_path: Path) -> None:
    worker = EngineWorker(synchronous=True)
    rec = Recorder(worker)
    worker.set_model(ModelSpec(str(tmp_path)))  # an empty folder
    assert [s[0] for s in rec.of("model_state")] == ["loading", "error"]
    assert rec.of("model_state")[-1][2]  # a sentence for the user
    assert len(rec.of("error")) == 1


def test_a_job_cancelled_before_it_starts_never_runs(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    worker = EngineWorker(synchronous=True)
    rec = Recorder(worker)
    job = chat(make_image(tmp_path / "a.png"))
    job.cancel.cancel()
    worker.set_model(spec, load_now=False)
    worker.submit(job)
    assert rec.of("model_state") == []  # not even loaded
    (_, result), = rec.of("chat_finished")
    assert result.stop_reason == "cancelled"


def test_threaded_cancel_mid_answer_stops_with_cancelled(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    worker = EngineWorker()
    thread = WorkerThread(worker)
    rec = Recorder(worker)
    gate = Gate()
    worker.token.connect(gate)  # runs in the worker thread: holds it after the first token
    try:
        worker.set_model(spec)
        job = worker.submit(chat(make_image(tmp_path / "a.png"), max_new_tokens=200))
        qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
        job.cancel.cancel()
        gate.open()
        qtbot.waitUntil(lambda: (job.job_id,) in rec.of("job_finished"), timeout=TIMEOUT_MS)
    finally:
        gate.open()
        thread.shutdown()
    (_, result), = [c for c in rec.of("chat_finished") if c[0] == job.job_id]
    assert result.stop_reason == "cancelled"
    assert len(result.token_ids) < 200
    assert not thread.isRunning()


def test_idle_unload_then_reload_on_demand(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    worker = EngineWorker()
    thread = WorkerThread(worker)
    rec = Recorder(worker)
    try:
        worker.set_idle_unload(1)  # 1 ms: unload as soon as the worker is idle
        worker.set_model(spec)
        qtbot.waitUntil(lambda: ("unloaded",) == tuple(s[0] for s in rec.of("model_state"))[-1:],
                        timeout=TIMEOUT_MS)
        worker.set_idle_unload(0)
        worker.submit(chat(make_image(tmp_path / "a.png"), max_new_tokens=3))
        qtbot.waitUntil(lambda: bool(rec.of("chat_finished")), timeout=TIMEOUT_MS)
    finally:
        thread.shutdown()
    states = [s[0] for s in rec.of("model_state")]
    assert states == ["loading", "ready", "unloaded", "loading", "ready"]


def test_shutdown_during_a_long_answer_ends_the_thread(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    worker = EngineWorker()
    thread = WorkerThread(worker)
    gate = Gate()
    worker.token.connect(gate)
    worker.set_model(spec)
    worker.submit(chat(make_image(tmp_path / "a.png"), max_new_tokens=500))
    queued = worker.submit(chat(make_image(tmp_path / "b.png"), max_new_tokens=500))
    qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
    threading.Timer(0.05, gate.open).start()  # lets the held worker go while shutdown waits
    thread.shutdown()  # cancels both; must not return while the thread runs
    assert not thread.isRunning()
    assert queued.cancel.cancelled


def test_synchronous_batch_writes_captions_and_skips_existing(qtbot, tmp_path: Path,
                                                              spec: ModelSpec) -> None:
    from smolvlm_desktop.batch import BatchSettings

    a = make_image(tmp_path / "a.png")
    b = make_image(tmp_path / "b.png", (40, 120, 200))
    (tmp_path / "b.txt").write_text("kept", encoding="utf-8")
    worker = EngineWorker(synchronous=True)
    rec = Recorder(worker)
    worker.set_model(spec)
    settings = BatchSettings(prompt="Caption this.", generation=GenerationSettings(max_new_tokens=4))
    worker.submit(BatchJob(paths=[a, b], settings=settings))
    (_, summary), = rec.of("batch_finished")
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, [])
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "kept"
    assert (tmp_path / "a.txt").is_file()
    assert str(a) in [e[3] for e in rec.of("image_started")]
    assert [e[1] for e in rec.of("image_skipped")] == [str(b)]
    (_, done_event), = rec.of("image_done")
    assert Path(done_event.path) == a
    assert rec.of("progress")[-1][1].done == 1


# --- the library -------------------------------------------------------------------------------


def test_chat_answers_are_recorded_as_one_growing_chat(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    from smolvlm_desktop.library.db import Library

    image = make_image(tmp_path / "a.png")
    worker = EngineWorker(synchronous=True, library_path=tmp_path / "lib.sqlite3")
    rec = Recorder(worker)
    worker.recorded = []
    worker.chat_recorded.connect(lambda job_id, chat_id: worker.recorded.append(chat_id))
    worker.set_model(spec)
    first = worker.submit(chat(image, "What is this zebrafish?"))
    (_, answer), = rec.of("chat_finished")
    assert answer.text.strip(), "the tiny model gave an empty answer; nothing to record"
    turns = [ChatTurn("user", "What is this zebrafish?", (str(image),)),
             ChatTurn("assistant", answer.text), ChatTurn("user", "And the okapi?")]
    worker.submit(ChatJob(turns=turns, settings=GenerationSettings(max_new_tokens=6),
                          chat_id=worker.recorded[0]))
    worker.close_library()
    assert len(worker.recorded) == 2 and worker.recorded[0] == worker.recorded[1]
    with Library(tmp_path / "lib.sqlite3") as library:
        hits = library.search("okapi")
        assert [h.kind for h in hits] == ["chat"] and hits[0].paths == (str(image.resolve()),)
        assert len(library.chat_turns(worker.recorded[0])) == 4
        assert library.search("zebrafish")[0].path == str(image.resolve())
    assert first.job_id != 0 and rec.of("error") == []


def test_a_broken_library_is_reported_once_and_chat_still_works(qtbot, tmp_path: Path,
                                                                spec: ModelSpec) -> None:
    broken = tmp_path / "lib.sqlite3"
    broken.write_bytes(b"this is not an SQLite database at all" * 100)
    worker = EngineWorker(synchronous=True, library_path=broken)
    rec = Recorder(worker)
    problems: list[str] = []
    worker.library_problem.connect(problems.append)
    worker.set_model(spec)
    image = make_image(tmp_path / "a.png")
    worker.submit(chat(image))
    worker.submit(chat(image))
    assert len(rec.of("chat_finished")) == 2 and rec.of("error") == []
    assert len(problems) == 1 and "could not be opened" in problems[0]
    assert broken.read_bytes().startswith(b"this is not"), "the broken file is left untouched"


def test_a_batch_is_a_library_job_that_resumes_with_its_own_settings(qtbot, tmp_path: Path,
                                                                     spec: ModelSpec) -> None:
    from smolvlm_desktop.batch import BatchSettings
    from smolvlm_desktop.library.db import Library

    from smolvlm_desktop.batch import GROUP_SIZE

    # One group more than fits: the cancel (at the first image done) lets the group in flight
    # finish and stops before the next.
    images = [make_image(tmp_path / f"{n}.png", (9 + 40 * n, 9, 9)) for n in range(GROUP_SIZE + 1)]
    worker = EngineWorker(synchronous=True, library_path=tmp_path / "lib.sqlite3")
    rec = Recorder(worker)
    worker.set_model(spec)
    settings = BatchSettings(prompt="Caption this.", generation=GenerationSettings(max_new_tokens=4))
    stop_after_first = BatchJob(paths=images, settings=settings)
    measured: list = []
    worker.measured.connect(measured.append)
    worker.image_done.connect(lambda *_: stop_after_first.cancel.cancel())
    worker.submit(stop_after_first)
    (_, summary), = rec.of("batch_finished")
    assert summary.cancelled and summary.done == GROUP_SIZE
    assert len(measured) == GROUP_SIZE and measured[0].tiles >= 1, "a captioned image times the machine"
    unfinished = worker.library.latest_unfinished_job()
    assert unfinished is not None and unfinished.counts["pending"] == 1
    resumed = BatchSettings.from_dict(unfinished.settings)
    worker.submit(BatchJob(paths=[], settings=resumed, resume_job_id=unfinished.id))
    worker.close_library()
    (_, again) = rec.of("batch_finished")[-1]
    assert not again.cancelled and again.done == 1
    assert all(p.with_suffix(".txt").is_file() for p in images)
    with Library(tmp_path / "lib.sqlite3") as library:
        assert library.latest_unfinished_job() is None
        assert all(library.captions_for(p) for p in images)


# --- issue 13: kept conversations and reading ahead ----------------------------------------------

def photo_file(path: Path) -> Path:
    """A 300x200 image: 13 tiles on the tiny model."""
    return make_image(path, size=(300, 200))


def test_a_follow_up_in_the_window_reads_only_its_own_tokens(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    worker = EngineWorker(synchronous=True, use_library=False)
    rec = Recorder(worker)
    worker.set_model(spec)
    image = str(photo_file(tmp_path / "a.png"))
    first = [ChatTurn("user", "Describe this image.", (image,))]
    worker.submit(ChatJob(turns=first, settings=GenerationSettings(max_new_tokens=6)))
    (_, one), = rec.of("chat_finished")
    follow = first + [ChatTurn("assistant", one.text), ChatTurn("user", "And the colour?")]
    worker.submit(ChatJob(turns=follow, settings=GenerationSettings(max_new_tokens=6)))
    two = rec.of("chat_finished")[-1][1]
    assert one.timings.tiles_read == 13 and two.timings.tiles_read == 0
    assert two.timings.cached_tokens >= one.timings.prompt_tokens


def test_an_answer_goes_back_to_the_model_without_its_leading_space(qtbot, tmp_path: Path) -> None:
    """The template writes "Assistant: " itself; the space a SmolVLM answer starts with (its
    first token is " The") would make it "Assistant:  The", which is neither what the model
    wrote nor what a kept conversation holds (so the whole answer would be read again)."""
    worker = EngineWorker(synchronous=True, use_library=False)
    turns = [ChatTurn("user", "  Hi"), ChatTurn("assistant", " The cat."), ChatTurn("user", "Why?")]
    messages = worker._messages(ChatJob(turns=turns))
    assert [m.text for m in messages] == ["  Hi", "The cat.", "Why?"]


def test_a_read_ahead_leaves_the_question_only_its_own_tokens(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    from smolvlm_desktop.worker import ReadAheadJob

    worker = EngineWorker(synchronous=True, use_library=False)
    rec = Recorder(worker)
    reading: list[tuple[int, int, int]] = []
    worker.reading.connect(lambda *r: reading.append(r))
    worker.set_model(spec)
    image = str(photo_file(tmp_path / "a.png"))
    ahead = worker.submit(ReadAheadJob(turns=[ChatTurn("user", "", (image,))]))
    assert reading[0] == (ahead.job_id, 0, 13) and reading[-1] == (ahead.job_id, 13, 13)
    worker.submit(ChatJob(turns=[ChatTurn("user", "Describe this image.", (image,))],
                          settings=GenerationSettings(max_new_tokens=6)))
    (_, result), = rec.of("chat_finished")
    assert result.timings.tiles_read == 0
    assert result.timings.prompt_tokens - result.timings.cached_tokens < 20


def test_a_read_ahead_is_quiet_and_loads_nothing(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    from smolvlm_desktop.worker import ReadAheadJob

    worker = EngineWorker(synchronous=True, use_library=False)
    rec = Recorder(worker)
    image = str(photo_file(tmp_path / "a.png"))
    worker.set_model(spec, load_now=False)
    worker.submit(ReadAheadJob(turns=[ChatTurn("user", "", (image,))]))
    assert rec.of("model_state") == []  # the person has not asked: no model is loaded for it
    worker.set_model(spec)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    worker.submit(ReadAheadJob(turns=[ChatTurn("user", "", (str(bad),))]))
    assert rec.of("error") == []  # told when the person asks about it, not before


class SlowFakeVisionGraph:
    """The real vision graph behind a turnstile: each tile waits until the test lets one more
    through, so "the read-ahead is in the middle of a tile" is a fact, not a timing guess."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.turnstile = threading.Semaphore(0)
        self.started = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def run(self, feeds: dict, run_options: object = None, outputs: object = None) -> list:
        self.started += 1
        assert self.turnstile.acquire(timeout=TIMEOUT_MS / 1000)
        return self.real.run(feeds, run_options, outputs)  # type: ignore[attr-defined]


def test_a_question_stops_a_read_ahead_within_the_tile_under_way_slow_fake_vision_graph(
        qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    from smolvlm_desktop.worker import ReadAheadJob

    worker = EngineWorker(use_library=False)
    thread = WorkerThread(worker)
    rec = Recorder(worker)
    image = str(photo_file(tmp_path / "a.png"))
    try:
        worker.set_model(spec)
        qtbot.waitUntil(lambda: ("ready",) == tuple(s[0] for s in rec.of("model_state"))[-1:],
                        timeout=TIMEOUT_MS)
        model = worker._model
        slow = SlowFakeVisionGraph(model.graphs["vision_encoder"])
        model.graphs["vision_encoder"] = slow
        ahead = worker.submit(ReadAheadJob(turns=[ChatTurn("user", "", (image,))]))
        slow.turnstile.release(3)
        qtbot.waitUntil(lambda: slow.started == 4, timeout=TIMEOUT_MS)  # 3 read, the 4th under way
        asked = worker.submit(ChatJob(turns=[ChatTurn("user", "Describe this image.", (image,))],
                                      settings=GenerationSettings(max_new_tokens=6)))
        assert ahead.cancel.cancelled  # asking stopped the read-ahead at once
        slow.turnstile.release(100)  # the tile under way ends (terminated); the question goes on
        qtbot.waitUntil(lambda: (asked.job_id,) in rec.of("job_finished"), timeout=TIMEOUT_MS)
    finally:
        slow.turnstile.release(100)
        thread.shutdown()
    (_, result), = rec.of("chat_finished")
    assert model.vision_runs == 13  # every tile read once: the 3 read ahead were not read again
    assert result.timings.tiles_read == 10
    assert rec.of("error") == []


def test_the_idle_unload_drops_the_kept_conversations_and_features(qtbot, tmp_path: Path,
                                                                    spec: ModelSpec) -> None:
    worker = EngineWorker(synchronous=True, use_library=False)
    worker.set_model(spec)
    image = str(photo_file(tmp_path / "a.png"))
    worker.submit(ChatJob(turns=[ChatTurn("user", "Hi", (image,))], settings=GenerationSettings(max_new_tokens=3)))
    model = worker._model
    chat, = worker._conversations.values()
    assert chat.nbytes > 0 and model.features.nbytes > 0
    worker._unload_when_idle()
    assert worker._model is None and worker._conversations == {}
    assert model.features.nbytes == 0


def test_kept_conversations_are_bounded_in_number_and_memory(qtbot, tmp_path: Path, spec: ModelSpec) -> None:
    from smolvlm_desktop import worker as worker_mod

    worker = EngineWorker(synchronous=True, use_library=False)
    kept: list[tuple[int, int]] = []
    worker.kept_memory.connect(lambda *m: kept.append(m))
    worker.set_model(spec)
    images = [str(make_image(tmp_path / f"{i}.png", (i * 50, 80, 40))) for i in range(4)]
    for image in images:
        worker.submit(ChatJob(turns=[ChatTurn("user", "Hi", (image,))], settings=GenerationSettings(max_new_tokens=3)))
    assert list(worker._conversations) == [(p,) for p in images[1:]]  # three kept, the oldest gone
    assert kept[-1][0] == sum(c.nbytes for c in worker._conversations.values()) > 0 and kept[-1][1] > 0
    one = kept[0][0]
    worker_mod.KEPT_CONVERSATION_BYTES, saved = one, worker_mod.KEPT_CONVERSATION_BYTES
    try:
        worker.submit(ChatJob(turns=[ChatTurn("user", "Hi", (images[0],))], settings=GenerationSettings(max_new_tokens=3)))
    finally:
        worker_mod.KEPT_CONVERSATION_BYTES = saved
    assert list(worker._conversations) == [(images[0],)]  # room for one only
