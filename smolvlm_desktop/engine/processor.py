"""PIL image -> vision tiles, exactly as the transformers Idefics3 PIL image processor does it.

Matching the reference bit for bit matters: the model was trained on these tiles, and the
equivalence tests compare our `pixel_values` with transformers'. The order of operations is
the reference's (`Idefics3ImageProcessorPil`):

1. convert to RGB, compositing any transparency on white;
2. resize the uint8 image with PIL (LANCZOS) so its longest edge is `longest_edge`; small
   images are scaled *up*; the short side is rounded to an even number; 4096 caps both sides;
3. with splitting: resize again so both sides are whole multiples of the tile, cut row-major
   tiles and add the whole image squashed to one tile (an image of one tile is not split);
   without splitting: squash the image to one tile;
4. rescale (in float64, then cast to float32) and normalise (in float32);
5. pad every tile to the largest one (bottom/right) and mark the real pixels; as every tile
   comes out exactly tile x tile, that padding is never needed (see `preprocess`).

EXIF orientation is not handled here: the image loader applies it before an image gets here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .files import ImageProcessorConfig

MAX_IMAGE_SIZE = 4096  # the reference's absolute cap on either side after the first resize


@dataclass
class ProcessedImages:
    pixel_values: np.ndarray  # float32 [1, total_tiles, 3, T, T]
    pixel_attention_mask: np.ndarray  # bool [1, total_tiles, T, T]
    grids: list[tuple[int, int]]  # per image (rows, cols); (0, 0) when not split


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white, as the reference's convert_to_rgb does
    (a plain convert would turn transparent pixels into whatever colour they hide)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_longest_edge(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) with the longest edge scaled to `longest`, up or down, the other side
    truncated then rounded up to even, then both kept under MAX_IMAGE_SIZE (the reference's
    `get_resize_output_image_size`, including its integer truncations)."""
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def fit_whole_tiles(height: int, width: int, tile: int) -> tuple[int, int]:
    """Both sides rounded up to multiples of the tile edge; the short side is derived from the
    rounded long side first, as the reference's `resize_for_vision_encoder` computes it."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def resize(image: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    """PIL resize; a no-op at the same size (PIL would return an identical copy anyway)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=resample)


def cut_tiles(image: Image.Image, tile: int, resample: int) -> tuple[list[np.ndarray], int, int]:
    """Row-major tiles of an image whose sides are multiples of `tile`, plus the whole image
    squashed to one tile. An image no larger than one tile is returned whole, unsplit."""
    width, height = image.size
    if height <= tile and width <= tile:
        return [np.asarray(image)], 0, 0
    rows, cols = height // tile, width // tile
    pixels = np.asarray(image)[: rows * tile, : cols * tile]
    grid = pixels.reshape(rows, tile, cols, tile, 3).swapaxes(1, 2).reshape(-1, tile, tile, 3)
    squashed = np.asarray(resize(image, tile, tile, resample))
    return [*grid, squashed], rows, cols


def image_to_tiles(image: Image.Image, cfg: ImageProcessorConfig,
                   longest_edge: int) -> tuple[list[np.ndarray], int, int]:
    """One image -> its uint8 HWC tiles and its grid (rows, cols)."""
    # The vision graph needs three channels, so a mode other than RGB is converted even when the
    # config says not to (the reference would fail later on such an image).
    image = to_rgb(image) if cfg.do_convert_rgb or image.mode != "RGB" else image
    if cfg.do_resize:
        image = resize(image, *fit_longest_edge(image.height, image.width, longest_edge), cfg.resample)
    tile = cfg.tile_size
    if not cfg.do_image_splitting:
        return [np.asarray(resize(image, tile, tile, cfg.resample))], 0, 0
    image = resize(image, *fit_whole_tiles(image.height, image.width, tile), cfg.resample)
    return cut_tiles(image, tile, cfg.resample)


def value_table(cfg: ImageProcessorConfig) -> np.ndarray:
    """float32 [3, 256]: what each uint8 value of each channel becomes after rescale + normalise.

    Evaluating the reference's exact expression once per possible value (rescale in float64,
    cast to float32, then (x - mean) / std in float32) and looking pixels up gives the very same
    numbers as computing it per pixel, without a float64 copy of every tile.
    """
    values = np.arange(256, dtype=np.uint8)
    if cfg.do_rescale:
        scaled = (values.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        scaled = values.astype(np.float32)
    table = np.repeat(scaled[None, :], 3, axis=0)
    if cfg.do_normalize:
        mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(cfg.image_std, dtype=np.float32)[:, None]
        table = (table - mean) / std
    return table


def preprocess(images: Sequence[Image.Image], cfg: ImageProcessorConfig,
               longest_edge: int | None = None) -> ProcessedImages:
    """All images of one conversation -> one batch of tiles for a single vision call.

    `longest_edge` is the user's "detail" setting; it replaces `size.longest_edge`, as passing
    `size={"longest_edge": N}` to the transformers processor does.
    """
    target = cfg.longest_edge if longest_edge is None else longest_edge
    tiles: list[np.ndarray] = []
    grids: list[tuple[int, int]] = []
    for image in images:
        image_tiles, rows, cols = image_to_tiles(image, cfg, target)
        tiles.extend(image_tiles)
        grids.append((rows, cols))
    # The reference pads every tile to the largest one of the batch and masks the padding, but
    # each path above yields tiles of exactly tile x tile (whole multiples are cut; small images
    # are rounded up to one tile; unsplit images are squashed to one), so nothing is ever padded
    # and the mask is all True. The vision graph still takes the mask, so it is built.
    size = cfg.tile_size
    batch = np.stack(tiles) if tiles else np.zeros((0, size, size, 3), dtype=np.uint8)
    table = value_table(cfg)
    pixel_values = np.empty((1, len(tiles), 3, size, size), dtype=np.float32)
    for channel in range(3):
        pixel_values[0, :, channel] = table[channel][batch[..., channel]]
    mask = np.ones((1, len(tiles), size, size), dtype=bool)
    return ProcessedImages(pixel_values=pixel_values, pixel_attention_mask=mask, grids=grids)
