"""The engine's speed paths give the same answers as the plain path.

The optimised-graph cache (`VisionLanguageModel.load(cache_dir=...)`) must change only how
fast sessions are created, never a logit; a cache that is stale, damaged or unwritable must
fall back to loading the original graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine import runtime
from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import GenerationSettings, Message

CONTINUATION = [30, 31, 32, 33]


def ask() -> list[Message]:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), "RGB")
    return [Message("user", "Describe this image.", images=(image,))]


def logits_of(model: VisionLanguageModel) -> np.ndarray:
    return model.teacher_forced_logits(ask(), CONTINUATION)


@pytest.fixture(scope="module")
def plain_logits(tiny_model_dir: Path) -> np.ndarray:
    model = VisionLanguageModel.load(tiny_model_dir, provider="cpu")
    try:
        return logits_of(model)
    finally:
        model.close()


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def test_cache_is_made_then_used_and_changes_no_logit(tiny_model_dir: Path, tmp_path: Path,
                                                      plain_logits: np.ndarray) -> None:
    cache = tmp_path / "ort-cache"
    first = VisionLanguageModel.load(tiny_model_dir, provider="cpu", cache_dir=cache)
    made = entries(cache)
    assert len(made) == 3  # one per graph, nothing half-made left behind
    assert all((e / "graph.onnx").is_file() and (e / "stamp.json").is_file() for e in made)
    np.testing.assert_array_equal(logits_of(first), plain_logits)
    first.close()

    stamps = {e: (e / "graph.onnx").stat().st_mtime_ns for e in made}
    second = VisionLanguageModel.load(tiny_model_dir, provider="cpu", cache_dir=cache)
    assert entries(cache) == made
    assert {e: (e / "graph.onnx").stat().st_mtime_ns for e in made} == stamps  # reused, not remade
    assert all(str(g.path).startswith(str(tiny_model_dir)) for g in second.graphs.values())
    np.testing.assert_array_equal(logits_of(second), plain_logits)


def test_stale_or_damaged_entry_is_made_again(tiny_model_dir: Path, tmp_path: Path,
                                              plain_logits: np.ndarray) -> None:
    cache = tmp_path / "ort-cache"
    VisionLanguageModel.load(tiny_model_dir, provider="cpu", cache_dir=cache).close()
    stale, damaged, _ = entries(cache)
    stamp = json.loads((stale / "stamp.json").read_text())
    stamp["onnxruntime"] = "0.0.0"
    (stale / "stamp.json").write_text(json.dumps(stamp))
    (damaged / "graph.onnx").write_bytes(b"not a graph")
    model = VisionLanguageModel.load(tiny_model_dir, provider="cpu", cache_dir=cache)
    assert json.loads((stale / "stamp.json").read_text())["onnxruntime"] != "0.0.0"
    assert (damaged / "graph.onnx").stat().st_size > 100
    np.testing.assert_array_equal(logits_of(model), plain_logits)


def test_unwritable_cache_still_loads(tiny_model_dir: Path, tmp_path: Path,
                                      plain_logits: np.ndarray) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model = VisionLanguageModel.load(tiny_model_dir, provider="cpu", cache_dir=blocker / "cache")
    np.testing.assert_array_equal(logits_of(model), plain_logits)


def test_no_cache_dir_writes_nothing(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tiny_model_dir))
    model = VisionLanguageModel.load(tiny_model_dir, provider="cpu")
    model.generate(ask(), GenerationSettings(max_new_tokens=2))
    assert sorted(os.listdir(tiny_model_dir)) == before
    assert list(tmp_path.iterdir()) == []


def test_every_session_spins_only_briefly(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A long busy-wait between ops slows decoding down when other programs want the cores,
    and a vision graph still spinning slows the prefill that follows it. Loaded fresh and
    through the optimised-graph cache (a second load reuses it)."""
    for _ in range(2):
        model = VisionLanguageModel.load(tiny_model_dir, provider="cpu", cache_dir=tmp_path / "ort-cache")
        for name, graph in model.graphs.items():
            options = graph.session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.spin_duration_us") == "50", name


def test_vision_one_tile_per_call_matches_one_call_for_all(tiny_model_dir: Path, monkeypatch) -> None:
    """Splitting the tiles into separate calls bounds memory; the fp32 features must not change."""
    import onnxruntime as ort

    from smolvlm_desktop.engine import model as model_module
    from smolvlm_desktop.engine.processor import preprocess

    model = VisionLanguageModel.load(tiny_model_dir, variant="fp32", provider="cpu", threads=1)
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8), "RGB")
    processed = preprocess([image], model.files.image_processor, None)
    tiles = processed.pixel_values.shape[1]
    assert tiles > 1
    features = {}
    for per_call in (1, tiles):
        monkeypatch.setattr(model_module, "VISION_TILES_PER_CALL", per_call)
        features[per_call] = model._vision(processed.pixel_values, processed.pixel_attention_mask,
                                           ort.RunOptions())
    assert features[1].shape[0] == tiles
    np.testing.assert_allclose(features[1], features[tiles], rtol=1e-5, atol=1e-5)
