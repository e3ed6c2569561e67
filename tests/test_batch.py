"""The batch runner on the tiny real model, real caption writers and a real library file."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from hostile_images import make_hostile_folder
from smolvlm_desktop.batch import (BatchRunner, BatchSettings, BatchSummary, ImageDone,
                                   ImageFailed, ImageSkipped, ImageStarted, Progress, TokenDelta,
                                   common_parent)
from smolvlm_desktop.engine.types import CancelToken, GenerationSettings
from smolvlm_desktop.library.db import Library
from smolvlm_desktop.library.discover import discover_images

GEN = GenerationSettings(max_new_tokens=6)
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200),
           (200, 30, 200), (120, 120, 120), (250, 250, 250)]


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.new("RGB", (48 + 8 * i, 40), COLOURS[i % len(COLOURS)]).save(path)
        paths.append(path)
    return paths


class Events(list):
    def of(self, kind: type) -> list:
        return [e for e in self if isinstance(e, kind)]


@pytest.fixture
def lib(tmp_path: Path):
    with Library(tmp_path / "library.sqlite3") as library:
        yield library


def runner(model, library=None, events=None, **settings) -> BatchRunner:
    settings.setdefault("generation", GEN)
    return BatchRunner(model, BatchSettings(prompt="Describe.", **settings), library=library,
                       on_event=events.append if events is not None else None)


def count_rows(library: Library, table: str) -> int:
    return library._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_hostile_folder_fails_one_by_one_and_captions_the_rest(tiny_model, lib: Library,
                                                               tmp_path: Path) -> None:
    cases = make_hostile_folder(tmp_path / "photos")
    images, problems = discover_images([tmp_path / "photos"])
    assert problems == []
    events = Events()
    summary = runner(tiny_model, lib, events).run(images)

    expected_bad = {n: why for n, why in cases.items() if why and (tmp_path / "photos" / n).is_file()}
    failed = {p.name: why for p, why in summary.failed}
    assert failed.keys() == expected_bad.keys()
    for name, why in expected_bad.items():
        assert why in failed[name]
    good = [p for p in images if p.name not in expected_bad]
    assert summary.done == len(good) and not summary.cancelled
    for path in good:
        text = path.with_suffix(".txt").read_text(encoding="utf-8")
        assert text and text == text.strip()
    for name in expected_bad:
        assert not (tmp_path / "photos" / name).with_suffix(".txt").exists()

    job = lib.job(summary.job_id)
    assert job.state == "finished" and job.settings["prompt"] == "Describe."
    assert job.counts == {"pending": 0, "done": len(good), "skipped": 0,
                          "failed": len(expected_bad), "total": len(images)}
    assert count_rows(lib, "captions") == len(good)
    word = good[0].with_suffix(".txt").read_text(encoding="utf-8").split()[0]
    assert lib.search(word)

    # per image: started, tokens, done; the streamed text is the caption (decoded in groups too)
    done = events.of(ImageDone)
    assert [e.path for e in done] == good
    assert all(e.total == len(images) for e in done)
    for image in done:
        streamed = "".join(e.text for e in events.of(TokenDelta) if e.path == image.path)
        assert streamed.strip() == image.text == image.files[0].read_text(encoding="utf-8")
    assert isinstance(events[0], Progress) and events[0].done == 0
    final = events.of(Progress)[-1]
    assert (final.done, final.failed, final.total) == (len(good), len(expected_bad), len(images))
    assert final.seconds_per_image > 0 and final.eta_seconds == 0
    assert len(events.of(ImageFailed)) == len(expected_bad)


def test_skip_existing_is_the_default_and_skips_do_not_count_as_work(tiny_model, lib: Library,
                                                                     tmp_path: Path) -> None:
    images = make_images(tmp_path, 3)
    for path in images:
        path.with_suffix(".txt").write_text("my own caption", encoding="utf-8")
    events = Events()
    summary = runner(tiny_model, lib, events).run(images)
    assert (summary.done, summary.skipped, summary.failed) == (0, 3, [])
    assert [e.path for e in events.of(ImageSkipped)] == images
    assert events.of(ImageStarted) == []  # the model never ran
    assert all(p.with_suffix(".txt").read_text(encoding="utf-8") == "my own caption" for p in images)
    final = events.of(Progress)[-1]
    assert final.skipped == 3 and final.seconds_per_image is None and final.eta_seconds is None
    assert {i.state for i in lib.job_items(summary.job_id)} == {"skipped"}


def test_overwrite_and_append(tiny_model, tmp_path: Path) -> None:
    (image,) = make_images(tmp_path, 1)
    sidecar = image.with_suffix(".txt")
    sidecar.write_text("mine", encoding="utf-8")
    runner(tiny_model, existing="overwrite").run([image])
    caption = sidecar.read_text(encoding="utf-8")
    assert caption and caption != "mine"

    sidecar.write_text("mine", encoding="utf-8")
    summary = runner(tiny_model, existing="append").run([image])
    assert summary.done == 1 and summary.job_id is None  # no library: no job
    assert sidecar.read_text(encoding="utf-8") == f"mine\n{caption}"


def test_aggregates_go_to_the_common_parent(tiny_model, tmp_path: Path) -> None:
    images = make_images(tmp_path / "set" / "a", 2) + make_images(tmp_path / "set" / "b", 1)
    assert common_parent(images) == tmp_path / "set"
    runner(tiny_model, outputs=("jsonl", "csv")).run(images)
    rows = [json.loads(line) for line in
            (tmp_path / "set" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["file_name"] for r in rows] == ["a/img00.png", "a/img01.png", "b/img00.png"]
    with open(tmp_path / "set" / "captions.csv", newline="", encoding="utf-8") as handle:
        assert [r["file_name"] for r in csv.DictReader(handle)] == [r["file_name"] for r in rows]


def test_an_unwritable_output_fails_that_image_only_and_keeps_its_caption(
        tiny_model, lib: Library, tmp_path: Path) -> None:
    images = make_images(tmp_path, 3)
    images[1].with_suffix(".txt").mkdir()  # a folder where the caption file must go
    summary = runner(tiny_model, lib, existing="overwrite").run(images)
    assert summary.done == 2
    ((path, reason),) = summary.failed
    assert path == images[1] and "could not write" in reason
    item = lib.job_item(summary.job_id, images[1])
    assert item.state == "failed" and item.caption  # the text is not lost
    assert images[2].with_suffix(".txt").is_file()


def test_settings_round_trip_through_the_job(lib: Library, tmp_path: Path) -> None:
    settings = BatchSettings(prompt="Tags.", generation=GenerationSettings(
        max_new_tokens=9, temperature=0.7, seed=3, detail=512, extra_stop_ids=(5, 6)),
        outputs=("txt", "jsonl"), existing="append", aggregate_dir=tmp_path)
    assert BatchSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


@pytest.mark.parametrize(("group_size", "kept"), [(1, 2), (4, 0)])
def test_cancel_mid_image_then_resume_captions_the_rest_exactly_once(tiny_model, lib: Library, tmp_path: Path,
                                                                     group_size: int, kept: int) -> None:
    """Images decoded one by one keep the two finished before the cancel; in groups of four
    the cancel stops the whole group in flight (images 1-4), which the resume then does."""
    images = make_images(tmp_path, 6)
    cancel = CancelToken()
    events = Events()

    def on_event(event: object) -> None:
        events.append(event)
        if isinstance(event, TokenDelta) and event.path == images[2]:
            cancel.cancel()  # as the Cancel button does, while image 3 is being generated

    first = BatchRunner(tiny_model, BatchSettings("Describe.", GEN, outputs=("txt", "jsonl")),
                        library=lib, on_event=on_event, group_size=group_size)
    summary = first.run(images, cancel=cancel)
    assert summary.cancelled and summary.done == kept
    assert any(isinstance(e, TokenDelta) and e.path == images[2] for e in events)
    assert not any(p.with_suffix(".txt").exists() for p in images[kept:])  # no partial file
    assert lib.job(summary.job_id).state == "cancelled"
    assert lib.pending_items(summary.job_id) == images[kept:]
    assert lib.latest_unfinished_job().id == summary.job_id

    resumed_events = Events()
    settings = BatchSettings.from_dict(lib.job(summary.job_id).settings)
    again = BatchRunner(tiny_model, settings, library=lib, on_event=resumed_events.append, group_size=group_size)
    resumed = again.run([], job_id=summary.job_id)
    assert (resumed.done, resumed.skipped, resumed.failed, resumed.cancelled) == (6 - kept, 0, [], False)
    assert [e.path for e in resumed_events.of(ImageStarted)] == images[kept:]
    assert resumed_events[0].done == kept  # progress goes on from where it stopped
    assert lib.job(summary.job_id).state == "finished"
    assert [i.state for i in lib.job_items(summary.job_id)] == ["done"] * 6
    assert count_rows(lib, "captions") == 6
    rows = (tmp_path / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(r)["file_name"] for r in rows) == [p.name for p in images]


def run_in_thread(target) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def test_pause_between_tokens_and_resume_from_another_thread(tiny_model, tmp_path: Path) -> None:
    images = make_images(tmp_path, 3)
    pause = threading.Event()
    paused_at = threading.Event()
    events = Events()

    def on_event(event: object) -> None:
        events.append(event)
        if isinstance(event, TokenDelta) and not paused_at.is_set():
            pause.set()  # the Pause button, pressed while the first image is generating
            paused_at.set()

    batch = BatchRunner(tiny_model, BatchSettings("Describe.", GEN), on_event=on_event)
    thread, out = run_in_thread(lambda: batch.run(images, pause=pause))
    assert paused_at.wait(30)
    seen = len(events)
    time.sleep(0.3)  # while paused nothing may happen, however long we wait
    assert len(events) == seen and thread.is_alive()
    assert not images[0].with_suffix(".txt").exists()
    pause.clear()
    thread.join(60)
    assert not thread.is_alive()
    summary: BatchSummary = out[0]
    assert summary.done == 3 and not summary.cancelled


def test_pause_between_images_then_cancel_while_paused(tiny_model, lib: Library, tmp_path: Path) -> None:
    images = make_images(tmp_path, 3)
    pause = threading.Event()
    first_done = threading.Event()
    events = Events()

    def on_event(event: object) -> None:
        events.append(event)
        if isinstance(event, ImageDone):
            pause.set()
            first_done.set()

    cancel = CancelToken()
    # One image per group: a pause takes effect between groups (or between tokens).
    batch = BatchRunner(tiny_model, BatchSettings("Describe.", GEN), library=lib, on_event=on_event, group_size=1)
    thread, out = run_in_thread(lambda: batch.run(images, cancel=cancel, pause=pause))
    assert first_done.wait(30)
    time.sleep(0.2)
    assert [e.path for e in events.of(ImageStarted)] == images[:1]  # waits before image 2
    cancel.cancel()  # the pause stays set: cancel alone must end the batch
    thread.join(30)
    assert not thread.is_alive() and pause.is_set()
    summary: BatchSummary = out[0]
    assert summary.cancelled and summary.done == 1
    assert lib.pending_items(summary.job_id) == images[1:]


@pytest.mark.parametrize("bad", [dict(outputs=("txt", "docx")), dict(outputs=()),
                                 dict(existing="merge")])
def test_bad_settings_are_refused_before_any_job_exists(bad: dict) -> None:
    with pytest.raises(ValueError):
        BatchSettings(prompt="Describe.", **bad)


def test_the_next_image_is_decoded_while_this_one_is_captioned(tmp_path: Path) -> None:
    """_Prefetch: taking image 0 starts decoding image 1 on the helper thread, so it is ready
    before anyone asks for it; a broken file raises its own ImageError when taken."""
    from smolvlm_desktop.batch import _Prefetch
    from smolvlm_desktop.engine.types import ImageError

    good = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(good):
        Image.new("RGB", (40 + i, 30), (i * 90, 20, 200)).save(path)
    broken = tmp_path / "c.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with _Prefetch([*good, broken]) as images:
        first = images.take(0)
        ahead = images._ahead[1]  # started by take(0), before anyone asked for image 1
        assert ahead.result(timeout=10).image.size == (41, 30)
        assert first.image.size == (40, 30)
        assert images.take(1).image.size == (41, 30)
        with pytest.raises(ImageError, match="c.png"):
            images.take(2)


def test_a_model_that_cannot_decode_together_captions_one_image_at_a_time(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    """With per-tensor dynamic int8 (the official files) there is no decoding together, so a
    group would only delay each caption: images go one by one, each streamed then written."""
    import shutil

    pytest.importorskip("onnx")
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.export import quantize_graph

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    quantize_graph(folder / "onnx" / "decoder_model_merged.onnx", folder / "onnx" / "decoder_model_merged_int8.onnx",
                   "int8")
    model = VisionLanguageModel.load(folder, variant="int8", provider="cpu", threads=1)
    images = make_images(tmp_path / "photos", 3)
    events = Events()
    summary = runner(model, None, events).run(images)
    assert summary.done == 3
    order = [(type(e).__name__, e.path) for e in events if isinstance(e, (ImageStarted, ImageDone))]
    assert order == [(kind, path) for path in images for kind in ("ImageStarted", "ImageDone")]
