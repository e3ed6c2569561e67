"""The batch's pluggable caption step (batch.CaptionStep) and the cluster's worker side,
without a cluster: the bookkeeping a step gets from BatchRunner, and the actor's code run
in this process on the tiny model (Ray is not needed for either)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smolvlm_desktop.batch import BatchRunner, BatchSettings, Captioned, NotCaptioned
from smolvlm_desktop.cluster import _CaptionActor, has_model, model_listing, unpack_model
from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.images import load_image
from smolvlm_desktop.engine.types import Message, Timings
from smolvlm_desktop.library.db import Library
from test_batch import GEN, make_images

SETTINGS = BatchSettings(prompt="Describe.", generation=GEN, outputs=("txt", "jsonl"))


class ScriptedStep:
    """A caption step that yields what it is told (as a flaky cluster might), in its order."""

    def __init__(self, script) -> None:  # type: ignore[no-untyped-def]
        self.script = script
        self.asked: list[list[Path]] = []

    def __call__(self, paths, cancel):  # type: ignore[no-untyped-def]
        self.asked.append(list(paths))
        return self.script(paths)


def caption(path: Path) -> Captioned:
    return Captioned(path, f"caption of {path.name}", Timings(new_tokens=3), [1, 2, 3])


def jsonl_names(folder: Path) -> list[str]:
    return [json.loads(line)["file_name"]
            for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_a_step_repeating_or_dropping_images_writes_each_once_and_resume_finishes_the_rest(
        tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", 6)
    with Library(tmp_path / "library.sqlite3") as library:
        # image 2 comes back twice (a retried block); image 5 never (the stream stopped)
        flaky = ScriptedStep(lambda paths: [caption(p) for p in [*paths[:3], paths[2], paths[3]]]
                             + [NotCaptioned(paths[4], "not found on cluster node n2")])
        first = BatchRunner(object(), SETTINGS, library=library, model_name="tiny",
                            step=flaky).run(images)
        assert (first.done, first.failed, first.cancelled) == (4, [(images[4], "not found on cluster node n2")], True)
        job = library.job(first.job_id)
        assert job.unfinished and job.counts["pending"] == 1
        assert (images[2].with_suffix(".txt")).read_text() == "caption of img02.png"

        steady = ScriptedStep(lambda paths: [caption(p) for p in paths])
        second = BatchRunner(object(), SETTINGS, library=library, model_name="tiny",
                             step=steady).run([], job_id=first.job_id)
        assert steady.asked == [[images[5]]]  # only what was left
        assert (second.done, second.cancelled) == (1, False)
        assert not library.job(first.job_id).unfinished
    names = jsonl_names(tmp_path / "photos")
    assert sorted(names) == sorted(p.name for p in images if p != images[4])
    assert len(names) == len(set(names))


def test_images_with_a_caption_are_skipped_before_the_step_sees_them(tmp_path: Path) -> None:
    images = make_images(tmp_path, 3)
    images[1].with_suffix(".txt").write_text("mine", encoding="utf-8")
    step = ScriptedStep(lambda paths: [caption(p) for p in paths])
    settings = BatchSettings(prompt="Describe.", generation=GEN, outputs=("txt",))
    summary = BatchRunner(object(), settings, model_name="tiny", step=step).run(images)
    assert step.asked == [[images[0], images[2]]]
    assert (summary.done, summary.skipped) == (2, 1)
    assert images[1].with_suffix(".txt").read_text() == "mine"


def test_a_steps_start_up_is_not_counted_in_the_time_per_image(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cluster waits seconds before its first caption (joining, models loading): that is
    not an image's time, and an ETA made of it would be far too long. A fake clock for
    the runner: 100 s to the first caption, then 2 s each."""
    from types import SimpleNamespace

    from smolvlm_desktop import batch
    from smolvlm_desktop.batch import Progress

    clock = [0.0]
    monkeypatch.setattr(batch, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=batch.time.sleep))

    def script(paths):  # type: ignore[no-untyped-def]
        clock[0] += 100.0
        for path in paths:
            clock[0] += 2.0
            yield caption(path)

    images = make_images(tmp_path, 4)
    events: list[object] = []
    settings = BatchSettings(prompt="Describe.", generation=GEN, outputs=("txt",))
    BatchRunner(object(), settings, model_name="tiny", step=ScriptedStep(script),
                on_event=events.append).run(images)
    progress = [(e.done, e.seconds_per_image, e.eta_seconds) for e in events if isinstance(e, Progress)]
    assert progress[-4:] == [(1, None, None), (2, 2.0, 4.0), (3, 2.0, 2.0), (4, 2.0, 0.0)]


def test_the_actor_reports_an_image_its_node_cannot_see_and_captions_the_rest(
        tiny_model_dir: Path, tiny_model: VisionLanguageModel, tmp_path: Path) -> None:
    images = make_images(tmp_path, 3)
    missing = tmp_path / "elsewhere" / "gone.png"
    listing = model_listing(tiny_model_dir, "fp32")
    actor = _CaptionActor(str(tiny_model_dir), listing, None, "fp32", 1, "Describe.", GEN)
    batch = {"path": np.array([str(images[0]), str(missing), str(images[1]), str(images[2])])}
    rows = actor(batch)
    assert rows["path"] == list(batch["path"])
    assert rows["error"][1].startswith("not found on cluster node") and rows["text"][1] == ""
    here = tiny_model.generate_many(
        [[Message("user", "Describe.", images=(load_image(p).image,))] for p in images], GEN)
    for row, result in zip((0, 2, 3), here):
        assert rows["error"][row] == ""
        assert (rows["text"][row], json.loads(rows["token_ids"][row])) == \
               (result.text.strip(), result.token_ids)


def test_a_node_without_the_model_folder_unpacks_the_shipped_files_once(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    listing = model_listing(tiny_model_dir, "fp32")
    assert "onnx/decoder_model_merged.onnx" in listing
    assert not any("_int8" in rel for rel in listing)  # only the variant asked for travels
    assert not has_model(tmp_path / "nowhere", listing)
    fetched: list[str] = []

    def fetch(rel: str) -> bytes:
        fetched.append(rel)
        return (tiny_model_dir / rel).read_bytes()

    folder = unpack_model(listing, fetch, root=tmp_path / "models")
    assert has_model(folder, listing) and sorted(fetched) == sorted(listing)
    assert unpack_model(listing, fetch, root=tmp_path / "models") == folder
    assert len(fetched) == len(listing)  # the second actor on the node reuses the copy
    model = VisionLanguageModel.load(folder, variant="fp32", provider="cpu", threads=1)
    assert model.info.variant == "fp32"


def test_a_batch_without_cluster_never_imports_ray(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Ray is a network module: only `--cluster` may load it (see test_privacy.py)."""
    image = make_images(tmp_path, 1)[0]
    code = ("import sys; from smolvlm_desktop.cli import main; "
            f"rc = main(['caption', {str(image)!r}, '--model', {str(tiny_model_dir)!r}, "
            "'--write', 'txt', '--max-new-tokens', '2', '--no-library']); "
            "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert image.with_suffix(".txt").exists()


def test_a_failed_ray_stream_is_streamed_again_for_what_did_not_come_back_simulated(
        monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The stream itself failing (results held on a dead node) cannot be arranged on purpose
    with a real cluster: the Ray Data pass is replaced by one that fails after two answers
    and a second that repeats one of them. Real Ray exceptions, real step and runner."""
    ray = pytest.importorskip("ray", reason="the 'cluster' extra is not installed")
    from smolvlm_desktop import cluster

    images = make_images(tmp_path, 5)
    passes: list[list[str]] = []

    def stream(self, ray_, paths, actor_args):  # type: ignore[no-untyped-def]
        passes.append(list(paths))
        if len(passes) == 1:
            yield from (caption(Path(p)) for p in paths[:2])
            raise ray.exceptions.ObjectLostError("0" * 56, "owner", "node died")
        yield caption(Path(passes[0][1]))  # a repeat: already delivered by the first pass
        yield from (caption(Path(p)) for p in paths)

    monkeypatch.setattr(cluster, "connect", lambda ray_, address: None)
    monkeypatch.setattr(cluster.RayCaptionStep, "_actor_args", lambda self, ray_: {})
    monkeypatch.setattr(cluster.RayCaptionStep, "_stream", stream)
    notes: list[str] = []
    model = cluster.ClusterModel.describe(tiny_model_dir, "fp32", 1)
    step = cluster.RayCaptionStep("127.0.0.1:1", model, "Describe.", GEN, on_note=notes.append)
    summary = BatchRunner(model, SETTINGS, model_name="tiny", step=step).run(images)
    assert (summary.done, summary.cancelled) == (5, False)
    assert passes[1] == [str(p) for p in images[2:]]  # only what had not come back
    assert len(notes) == 1 and "3 images go again" in notes[0]
    names = jsonl_names(tmp_path)
    assert sorted(names) == sorted(p.name for p in images)


def test_a_variant_read_with_the_fp32_vision_graph_ships_that_graph(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A FastVLM int8 pull keeps the fp32 vision graph (engine/files.py VISION_GRAPH): a cluster
    node must get that file, not look for vision_encoder_int8.onnx."""
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("vision_encoder_int8.onnx", "embed_tokens.onnx", "decoder_model_merged.onnx"):
        (folder / "onnx" / name).unlink()
    listing = model_listing(folder, "int8")
    assert sorted(rel for rel in listing if rel.startswith("onnx/")) == [
        "onnx/decoder_model_merged_int8.onnx", "onnx/decoder_model_merged_int8_prompt.onnx",
        "onnx/embed_tokens_int8.onnx", "onnx/vision_encoder.onnx"]


def test_an_error_while_a_step_unwinds_from_ctrl_c_still_stops_as_interrupted(
        tiny_model: VisionLanguageModel, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ray can raise while it unwinds from a KeyboardInterrupt (its shutdown in the cluster
    step's `finally`, a call cut short). That error is part of the stop: the command exits as
    interrupted (130) with the resume hint, not as failed (1), and the job resumes. (A likely
    cause of the Ctrl+C test in test_cluster.py exiting 1 in some full runs.)"""
    import argparse

    from smolvlm_desktop.commands.caption import Reporter, drive
    from smolvlm_desktop.commands.common import EXIT_INTERRUPTED, Stopped

    images = make_images(tmp_path / "photos", 3)

    def ctrl_c_then_a_failing_shutdown(paths):  # type: ignore[no-untyped-def]
        try:
            yield caption(paths[0])
            raise KeyboardInterrupt
        finally:
            raise ConnectionError("the connection to the cluster closed while it shut down")

    with Library(tmp_path / "library.sqlite3") as library:
        reporter = Reporter(argparse.Namespace(json=True), tiny_model)
        with pytest.raises(Stopped) as stopped:
            drive(tiny_model, SETTINGS, library, images, None, reporter,
                  step=ScriptedStep(ctrl_c_then_a_failing_shutdown))
        assert stopped.value.status == EXIT_INTERRUPTED
        assert "interrupted: run the same command again to resume" in capsys.readouterr().err
        job = library.latest_unfinished_job()
        assert job is not None and job.counts["pending"] == 2
