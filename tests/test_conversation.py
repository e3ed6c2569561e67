"""Answers that start at once (issue 13), on the real tiny model, fp32 and int8, greedy.

The proof that each cache is safe is the same every time: the answer with it is token for
token the answer a fresh model gives with nothing kept. Work saved is counted, not timed:
`vision_runs` counts real vision-graph calls, `timings.cached_tokens` the prompt tokens that
were not read again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import GenerationSettings, Message

GREEDY = GenerationSettings(max_new_tokens=12)


def photo(seed: int = 0, size: tuple[int, int] = (300, 200)) -> Image.Image:
    """A 300x200 noise photo: 13 tiles at the tiny model's own detail (4 x 3 and the whole)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module", params=["fp32", "int8"])
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def fresh(tiny_model_dir: Path, variant: str) -> VisionLanguageModel:
    """The reference: a model that keeps nothing between answers."""
    model = VisionLanguageModel.load(tiny_model_dir, variant=variant, provider="cpu", threads=1)
    model.features.max_bytes = 0
    return model


@pytest.fixture
def model(tiny_model_dir: Path, variant: str) -> VisionLanguageModel:
    """A model with an empty feature cache, for each test."""
    return VisionLanguageModel.load(tiny_model_dir, variant=variant, provider="cpu", threads=1)


# --- 1. image features kept by content --------------------------------------------------------

def test_a_second_question_on_the_same_pixels_reads_no_tiles_and_answers_the_same(
        model: VisionLanguageModel, fresh: VisionLanguageModel) -> None:
    first = [Message("user", "Describe this image.", images=(photo(),))]
    again = [Message("user", "What colour is it?", images=(photo().copy(),))]  # same pixels, new object
    want = [fresh.generate(m, GREEDY).token_ids for m in (first, again)]
    got = [model.generate(first, GREEDY)]
    runs = model.vision_runs
    got.append(model.generate(again, GREEDY))
    assert runs == 13
    assert model.vision_runs == runs  # the second read no tiles
    assert [r.token_ids for r in got] == want
    assert fresh.vision_runs >= 26  # the reference read them both times


def test_the_feature_cache_keys_on_pixels_and_detail(model: VisionLanguageModel) -> None:
    model.generate([Message("user", "Hi", images=(photo(0),))], GREEDY)
    model.generate([Message("user", "Hi", images=(photo(1),))], GREEDY)  # other pixels
    assert model.vision_runs == 26
    model.generate([Message("user", "Hi", images=(photo(0),))],
                   GenerationSettings(max_new_tokens=4, detail=128))  # other detail: other tiles
    assert model.vision_runs == 26 + 5  # 128 px: 2 x 2 tiles and the whole


def test_the_feature_cache_is_bounded_by_bytes_least_recent_out(model: VisionLanguageModel) -> None:
    model.generate([Message("user", "Hi", images=(photo(0),))], GREEDY)
    one_image = model.features.nbytes
    model.features.max_bytes = one_image  # room for one image
    model.generate([Message("user", "Hi", images=(photo(1),))], GREEDY)
    assert len(model.features) == 1 and model.features.nbytes == one_image
    model.generate([Message("user", "Hi", images=(photo(0),))], GREEDY)  # pushed out: read again
    assert model.vision_runs == 39
