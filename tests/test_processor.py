"""Image -> tiles, against the transformers Idefics3 PIL image processor on the same settings.

Tolerance: none. Our `pixel_values` and `pixel_attention_mask` must be *identical* to the
reference's (same PIL LANCZOS resizes on uint8 images, same float64 rescale then float32
normalisation), so every comparison below is exact equality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine.files import ImageProcessorConfig, load_model_files
from smolvlm_desktop.engine.processor import fit_longest_edge, fit_whole_tiles, preprocess


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Gradients plus noise: every tile differs and any resampling difference shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x * 3 + y * 5) % 256, (x * 7 + y) % 256], axis=-1)
    pixels = np.clip(base + rng.integers(-30, 30, size=base.shape), 0, 255).astype(np.uint8)
    rgba = Image.fromarray(pixels, "RGBA")  # alpha varies across the image
    if mode == "RGBA":
        return rgba
    if mode == "P":
        palette = rgba.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        palette.info["transparency"] = 3  # palette entry 3 is transparent: composited on white
        return palette
    return rgba.convert("RGB").convert(mode)


@pytest.fixture(scope="module")
def cfg(tiny_model_dir: Path) -> ImageProcessorConfig:
    """The tiny model's settings: tiles of 64 px, longest edge 256."""
    return load_model_files(tiny_model_dir).image_processor


# --- sizes and grids (no reference needed) ---------------------------------------------------

def test_small_images_are_scaled_up_to_the_longest_edge() -> None:
    assert fit_longest_edge(30, 40, 256) == (192, 256)  # the example of SMOLVLM_FORMAT.md


def test_the_short_side_is_rounded_up_to_even_and_4096_caps_both() -> None:
    assert fit_longest_edge(101, 300, 300) == (102, 300)
    assert fit_longest_edge(100, 40000, 8192) == (10, 4096)  # 8192 x 20 is capped to 4096 x 10


def test_sides_become_whole_tiles_from_the_rounded_long_side() -> None:
    assert fit_whole_tiles(192, 256, 64) == (192, 256)
    assert fit_whole_tiles(1534, 2048, 512) == (1536, 2048)
    assert fit_whole_tiles(300, 200, 512) == (512, 512)


@pytest.mark.parametrize("detail, passes", [(512, 1), (1024, 5), (1536, 10), (2048, 17)])
def test_detail_setting_decides_the_number_of_vision_passes(cfg: ImageProcessorConfig,
                                                            detail: int, passes: int) -> None:
    """The speed knob of SMOLVLM_FORMAT.md, on SmolVLM-256M's settings and a square image."""
    smolvlm_256m = dataclasses.replace(cfg, longest_edge=2048, tile_size=512)
    out = preprocess([photo(600, 600)], smolvlm_256m, longest_edge=detail)
    side = int(np.sqrt(passes - 1))
    assert out.grids == [(side, side) if passes > 1 else (0, 0)]
    assert out.pixel_values.shape == (1, passes, 3, 512, 512)
    assert out.pixel_values.dtype == np.float32
    assert out.pixel_attention_mask.dtype == np.bool_
    assert out.pixel_attention_mask.all()


def test_tiles_are_row_major_and_the_last_is_the_whole_image(cfg: ImageProcessorConfig) -> None:
    """A 256x128 image of four coloured 64-px columns per row: tile order is visible."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=np.uint8)
    top = np.repeat(np.repeat(colours[None], 64, axis=0), 64, axis=1)  # 64 x 256
    pixels = np.concatenate([top, 255 - top])  # the second row is inverted
    out = preprocess([Image.fromarray(pixels, "RGB")], cfg)
    assert out.grids == [(2, 4)]
    values = out.pixel_values[0]
    expected_top = (colours / 255 - 0.5) / 0.5
    for c in range(4):
        np.testing.assert_allclose(values[c, :, 30, 30], expected_top[c], atol=1e-6)
        np.testing.assert_allclose(values[4 + c, :, 30, 30], -expected_top[c], atol=1e-6)
    # the global image: red at its top left, black (inverted white) at its bottom right
    np.testing.assert_allclose(values[8, :, 2, 2], [1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(values[8, :, 62, 62], [-1, -1, -1], atol=1e-6)


def test_no_splitting_squashes_each_image_to_one_tile(cfg: ImageProcessorConfig) -> None:
    out = preprocess([photo(300, 100), photo(50, 80)], dataclasses.replace(cfg, do_image_splitting=False))
    assert out.grids == [(0, 0), (0, 0)]
    assert out.pixel_values.shape == (1, 2, 3, 64, 64)


def test_no_images_gives_an_empty_batch_of_the_right_shape(cfg: ImageProcessorConfig) -> None:
    out = preprocess([], cfg)
    assert out.grids == []
    assert out.pixel_values.shape == (1, 0, 3, 64, 64)
    assert out.pixel_attention_mask.shape == (1, 0, 64, 64)


# --- against the transformers reference --------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.Idefics3ImageProcessorPil.from_pretrained(tiny_model_dir)


def assert_same_as_reference(reference, images: list[Image.Image], cfg: ImageProcessorConfig,
                             longest_edge: int | None = None, **reference_kwargs) -> None:
    if longest_edge is not None:
        reference_kwargs["size"] = {"longest_edge": longest_edge}
    theirs = reference(images=[images], return_tensors="np", return_row_col_info=True,
                       **reference_kwargs)
    ours = preprocess(images, cfg, longest_edge)
    assert ours.grids == list(zip(theirs["rows"][0], theirs["cols"][0]))
    assert ours.pixel_values.shape == theirs["pixel_values"].shape
    assert ours.pixel_values.dtype == np.float32
    np.testing.assert_array_equal(ours.pixel_values, theirs["pixel_values"])
    np.testing.assert_array_equal(ours.pixel_attention_mask, theirs["pixel_attention_mask"].astype(bool))


REFERENCE_CASES = {
    "split 300x200 (4x3 tiles + global)": ([photo(300, 200, 1)], None, (3, 4)),
    "one tile, not split (detail 64)": ([photo(120, 90, 2)], 64, (0, 0)),
    "tiny 40x30 scaled up to 256x192": ([photo(40, 30, 3)], None, (3, 4)),
    "portrait 90x200": ([photo(90, 200, 4)], None, (4, 2)),
    "RGBA with varying alpha": ([photo(100, 80, 5, "RGBA")], None, (4, 4)),
    "greyscale L": ([photo(100, 80, 6, "L")], None, (4, 4)),
    "palette P with a transparent entry": ([photo(100, 80, 7, "P")], None, (4, 4)),
    "two images": ([photo(100, 80, 8), photo(70, 150, 9)], None, (4, 4)),
    "detail override 128": ([photo(300, 200, 10)], 128, (2, 2)),
    "odd sizes, panorama 997x61": ([photo(997, 61, 11)], None, (1, 4)),
}


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_identical_to_transformers(case: str, reference, cfg: ImageProcessorConfig) -> None:
    images, longest_edge, first_grid = REFERENCE_CASES[case]
    assert preprocess(images, cfg, longest_edge).grids[0] == first_grid  # the case is what it says
    assert_same_as_reference(reference, images, cfg, longest_edge)


@pytest.mark.slow
@pytest.mark.reference
def test_identical_to_transformers_on_smolvlm_256m_settings(reference, cfg: ImageProcessorConfig) -> None:
    """Real sizes: a 1600x1200 photo on 512-px tiles and a 2048 longest edge (4x3 + global)."""
    smolvlm_256m = dataclasses.replace(cfg, longest_edge=2048, tile_size=512)
    assert_same_as_reference(reference, [photo(1600, 1200, 12)], smolvlm_256m,
                             max_image_size={"longest_edge": 512}, size={"longest_edge": 2048})


@pytest.mark.slow
@pytest.mark.reference
def test_identical_to_transformers_without_splitting(reference, cfg: ImageProcessorConfig) -> None:
    unsplit = dataclasses.replace(cfg, do_image_splitting=False)
    assert_same_as_reference(reference, [photo(300, 100, 13), photo(50, 80, 14)], unsplit,
                             do_image_splitting=False)
