"""The FastVLM family: its processor against transformers', its folder, its prompt, and the
tiny random-weight FastVLM (smolvlm_desktop/data/tiny-fastvlm) run end to end by the engine.

The processor settings are those transformers' FastVLM conversion script writes (a
CLIPImageProcessor: shortest edge 1024 bicubic, centre crop 1024, mean 0, std 1; see
docs/FASTVLM_FORMAT.md). Tolerance: none; pixels must be identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine.families import FASTVLM, SMOLVLM, family_for
from smolvlm_desktop.engine.families.fastvlm import parse_clip_processor, shortest_edge_size
from tests.test_processor import photo

OFFICIAL_PREPROCESSOR = {
    "crop_size": {"height": 1024, "width": 1024}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.0, 0.0, 0.0],
    "image_processor_type": "CLIPImageProcessor", "image_std": [1.0, 1.0, 1.0],
    "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 1024},
}
TINY = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-fastvlm"


def test_the_family_follows_config_model_type() -> None:
    assert family_for({"model_type": "llava_qwen2"}) is FASTVLM
    assert family_for({"model_type": "fast_vlm"}) is FASTVLM
    assert family_for({"model_type": "idefics3"}) is SMOLVLM
    assert family_for({}) is SMOLVLM  # folders from before families existed


def test_the_short_side_becomes_the_target_and_the_long_side_is_truncated() -> None:
    assert shortest_edge_size(1536, 2048, 1024) == (1024, 1365)
    assert shortest_edge_size(2048, 1536, 1024) == (1365, 1024)
    assert shortest_edge_size(500, 500, 1024) == (1024, 1024)


def test_one_vision_pass_per_picture_whatever_its_size() -> None:
    cfg = parse_clip_processor(OFFICIAL_PREPROCESSOR, Path("preprocessor_config.json"))
    out = FASTVLM.preprocess([photo(2048, 1536, 1), photo(300, 90, 2)], cfg, longest_edge=512)
    assert out.pixel_values.shape == (1, 2, 3, 1024, 1024)
    assert out.grids == [(0, 0), (0, 0)]
    assert FASTVLM.vision_feeds(out.pixel_values[:, :1], out.pixel_attention_mask[:, :1])[
        "pixel_values"].shape == (1, 3, 1024, 1024)


CASES = {
    "landscape photo 2048x1536": photo(2048, 1536, 3),
    "portrait 600x900, scaled up": photo(600, 900, 4),
    "panorama 1500x200": photo(1500, 200, 5),
    "RGBA with varying alpha": photo(700, 500, 6, "RGBA"),
    "greyscale L": photo(640, 480, 7, "L"),
}


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_pixels_identical_to_transformers_clip_processor(case: str) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPImageProcessorPil(**{
        k: v for k, v in OFFICIAL_PREPROCESSOR.items() if k not in ("image_processor_type", "processor_class")})
    image = CASES[case]
    theirs = reference(images=[image], return_tensors="np")["pixel_values"]
    cfg = parse_clip_processor(OFFICIAL_PREPROCESSOR, Path("preprocessor_config.json"))
    ours = FASTVLM.preprocess([image], cfg).pixel_values[0]
    assert ours.shape == theirs.shape == (1, 3, 1024, 1024)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
