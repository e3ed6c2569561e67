"""FastVLM (Apple, CVPR 2025): one pass of the FastViTHD encoder over the whole picture.

Layout of the official ONNX release (onnx-community/FastVLM-0.5B-ONNX; facts and sources in
docs/FASTVLM_FORMAT.md): config.json is a flat Qwen2 config of model_type "llava_qwen2" (the
transformers-native form, "fast_vlm", nests it under text_config); the picture goes through
a CLIP image processor (shortest edge resized to 1024 with bicubic, centre crop 1024 x 1024,
rescale 1/255, mean 0 and std 1); the vision graph takes `pixel_values` [batch, 3, 1024, 1024]
and returns `image_features` [batch, 256, hidden]: (1024 / 64)^2 tokens, the encoder
downsampling 64 times. In the prompt, the Qwen2 chat template writes one `<image>` per
picture, which the LLaVA processor repeats once per feature row.

The pixels are computed the way transformers' CLIPImageProcessorPil does (PIL resize of the
uint8 image, integer centre crop, rescale in float64 cast to float32, normalise in float32),
so that they match it exactly (tests/test_fastvlm.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..files import ImageProcessorConfig, read_json, _triple
from ..processor import ProcessedImages, to_rgb, value_table
from ..types import ModelFolderError

# The encoder downsamples 64 times (stem 4x, then four 2x stages): a 1024-px picture gives a
# 16 x 16 grid of feature rows. processor_config.json's patch_size says so too (LLaVA processor).
DEFAULT_PATCH_SIZE = 64
PIL_BICUBIC = 3


def _edge(raw: dict, key: str, source: Path, *names: str) -> int:
    value = raw.get(key)
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        for name in names:
            if value.get(name) is not None:
                return int(value[name])
    raise ModelFolderError(f"{source}: {key!r} should be an object with {' or '.join(names)}, got {value!r}")


def parse_clip_processor(raw: dict, source: Path) -> ImageProcessorConfig:
    """CLIPImageProcessor settings in the shared form: `longest_edge` holds the shortest-edge
    resize target and `tile_size` the crop edge; the picture is never split into tiles."""
    try:
        crop = _edge(raw, "crop_size", source, "height", "shortest_edge")
        cfg = ImageProcessorConfig(
            longest_edge=_edge(raw, "size", source, "shortest_edge", "height"),
            tile_size=crop,
            do_resize=bool(raw.get("do_resize", True)),
            do_image_splitting=False,
            do_rescale=bool(raw.get("do_rescale", True)),
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
            do_normalize=bool(raw.get("do_normalize", True)),
            image_mean=_triple(raw.get("image_mean", 0.0)),
            image_std=_triple(raw.get("image_std", 1.0)),
            resample=int(raw.get("resample", PIL_BICUBIC)),
            do_pad=False,
            do_center_crop=bool(raw.get("do_center_crop", True)),
            do_convert_rgb=bool(raw.get("do_convert_rgb", True)),
        )
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{source}: unreadable image processor setting: {exc}") from None
    if cfg.longest_edge < 1 or cfg.tile_size < 1:
        raise ModelFolderError(f"{source}: size and crop_size must be positive")
    return cfg


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """(height, width) with the short side `shortest` and the long side truncated in
    proportion: transformers' get_resize_output_image_size(default_to_square=False)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def to_square(image: Image.Image, cfg: ImageProcessorConfig, shortest: int) -> np.ndarray:
    """One picture -> uint8 [crop, crop, 3]: resize, then centre crop (as the reference)."""
    image = to_rgb(image) if cfg.do_convert_rgb or image.mode != "RGB" else image
    if cfg.do_resize:
        height, width = shortest_edge_size(image.height, image.width, shortest)
        if image.size != (width, height):
            image = image.resize((width, height), resample=cfg.resample)
    pixels = np.asarray(image)
    if cfg.do_center_crop:  # padding with zeros where the picture is smaller, as the reference
        crop = cfg.tile_size
        height, width = pixels.shape[:2]
        top, left = (height - crop) // 2, (width - crop) // 2
        out = np.zeros((crop, crop, 3), dtype=np.uint8)
        src = pixels[max(top, 0):max(top, 0) + crop, max(left, 0):max(left, 0) + crop]
        out[max(-top, 0):max(-top, 0) + src.shape[0], max(-left, 0):max(-left, 0) + src.shape[1]] = src
        pixels = out
    return pixels


class FastVLMFamily:
    name = "FastVLM"
    graph_inputs: dict[str, tuple[str, ...]] = {"vision_encoder": ("pixel_values",)}
    model_types = ("llava_qwen2", "fast_vlm")

    def read_image_processor(self, folder: Path, processor_config: dict) -> ImageProcessorConfig:
        nested = processor_config.get("image_processor")
        if isinstance(nested, dict):
            return parse_clip_processor(nested, folder / "processor_config.json")
        path = folder / "preprocessor_config.json"
        raw = read_json(path, required=False)
        if not raw:
            raise ModelFolderError(f"{folder} has no image processor settings: expected preprocessor_config.json")
        return parse_clip_processor(raw, path)

    def image_seq_len(self, config: dict, processor_config: dict, folder: Path) -> int:
        """(crop / patch_size)^2 + num_additional_image_tokens, as the LLaVA processor counts;
        config.json's image_seq_length when the processor config does not say."""
        if "patch_size" in processor_config:
            cfg = self.read_image_processor(folder, processor_config)
            side = cfg.tile_size // int(processor_config["patch_size"])
            return side * side + int(processor_config.get("num_additional_image_tokens", 0))
        if "image_seq_length" in config:
            return int(config["image_seq_length"])
        cfg = self.read_image_processor(folder, processor_config)
        return (cfg.tile_size // DEFAULT_PATCH_SIZE) ** 2

    def preprocess(self, images: Sequence[Image.Image], cfg: ImageProcessorConfig,
                   longest_edge: int | None = None) -> ProcessedImages:
        """One vision pass per picture. The user's detail setting does not apply: the encoder
        reads one fixed square, so `longest_edge` is ignored."""
        squares = [to_square(image, cfg, cfg.longest_edge) for image in images]
        size = cfg.tile_size if not squares else squares[0].shape[0]
        batch = np.stack(squares) if squares else np.zeros((0, size, size, 3), dtype=np.uint8)
        table = value_table(cfg)
        pixel_values = np.empty((1, len(squares), 3, size, size), dtype=np.float32)
        for channel in range(3):
            pixel_values[0, :, channel] = table[channel][batch[..., channel]]
        mask = np.ones((1, len(squares), 1, 1), dtype=bool)  # unused by the graph; kept for the shared shape
        return ProcessedImages(pixel_values=pixel_values, pixel_attention_mask=mask,
                               grids=[(0, 0)] * len(squares))

    def text_config(self, config: dict) -> dict:
        """The Qwen2 settings: flat in the llava_qwen2 config, nested in the fast_vlm one."""
        nested = config.get("text_config")
        return nested if isinstance(nested, dict) else config

    def image_placeholder(self, rows: int, cols: int, seq_len: int) -> str:
        return "<image>" * seq_len

    def vision_feeds(self, pixel_values: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        return {"pixel_values": pixel_values[0]}  # [1, 1, 3, H, W] -> [1, 3, H, W]


FASTVLM = FastVLMFamily()
