"""PIL image -> vision tiles, exactly as the transformers Idefics3 PIL image processor does it.

Matching the reference bit for bit matters: the model was trained on these tiles, and the
equivalence tests compare our `pixel_values` with transformers'. The order of operations is
the reference's: resize the uint8 image (LANCZOS) so its longest edge is `longest_edge`
(small images are scaled *up*), resize again up to whole tiles, cut row-major tiles plus one
global image squashed to a single tile, then rescale, normalise and pad.
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
    """RGB with any transparency composited on white, as the reference does."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_longest_edge(height: int, width: int, longest: int) -> tuple[int, int]:
    """Scale so the longest edge is `longest` (up or down), keeping the other side even."""
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
    # then never above the absolute cap
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def fit_whole_tiles(height: int, width: int, tile: int) -> tuple[int, int]:
    """Round the sides up to multiples of the tile edge, as the reference computes it."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def resize(image: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=resample)


def split_into_tiles(image: Image.Image, tile: int, resample: int) -> tuple[list[Image.Image], int, int]:
    """Row-major tiles plus the whole image squashed to one tile; small images stay whole."""
    width, height = image.size
    if height <= tile and width <= tile:
        return [image], 0, 0
    rows = (height - tile) // tile + 1
    cols = (width - tile) // tile + 1
    tiles = [image.crop((c * tile, r * tile, c * tile + tile, r * tile + tile))
             for r in range(rows) for c in range(cols)]
    tiles.append(resize(image, tile, tile, resample))
    return tiles, rows, cols


def image_to_tiles(image: Image.Image, cfg: ImageProcessorConfig,
                   longest_edge: int) -> tuple[list[Image.Image], int, int]:
    image = to_rgb(image) if cfg.do_convert_rgb else image
    if cfg.do_resize:
        h, w = fit_longest_edge(image.height, image.width, longest_edge)
        image = resize(image, h, w, cfg.resample)
    if not cfg.do_image_splitting:
        return [resize(image, cfg.tile_size, cfg.tile_size, cfg.resample)], 0, 0
    h, w = fit_whole_tiles(image.height, image.width, cfg.tile_size)
    image = resize(image, h, w, cfg.resample)
    return split_into_tiles(image, cfg.tile_size, cfg.resample)


def normalise(tile: Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    """uint8 HWC -> float32 CHW, rescaled in float64 then cast, as the reference does."""
    array = np.asarray(tile).transpose(2, 0, 1)
    if cfg.do_rescale:
        array = (array.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        array = array.astype(np.float32)
    if cfg.do_normalize:
        mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(cfg.image_std, dtype=np.float32)[:, None, None]
        array = (array - mean) / std
    return array


def preprocess(images: Sequence[Image.Image], cfg: ImageProcessorConfig,
               longest_edge: int | None = None) -> ProcessedImages:
    """All images of one conversation -> one batch of tiles for a single vision call.

    `longest_edge` is the user's "detail" setting; it replaces `size.longest_edge`.
    """
    target = longest_edge or cfg.longest_edge
    tiles: list[Image.Image] = []
    grids: list[tuple[int, int]] = []
    for image in images:
        image_tiles, rows, cols = image_to_tiles(image, cfg, target)
        tiles.extend(image_tiles)
        grids.append((rows, cols))
    # The reference pads to the largest tile in the batch: with splitting that is a full tile
    # unless every image was small.
    max_h = max(t.height for t in tiles)
    max_w = max(t.width for t in tiles)
    pixel_values = np.zeros((1, len(tiles), 3, max_h, max_w), dtype=np.float32)
    mask = np.zeros((1, len(tiles), max_h, max_w), dtype=bool)
    for i, tile in enumerate(tiles):
        pixel_values[0, i, :, :tile.height, :tile.width] = normalise(tile, cfg)
        mask[0, i, :tile.height, :tile.width] = True
    return ProcessedImages(pixel_values=pixel_values, pixel_attention_mask=mask, grids=grids)
