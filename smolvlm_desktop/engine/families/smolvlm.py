"""SmolVLM (Idefics3): 512-px tiles plus a global image, 64 image tokens per tile for the
256M/500M models, `<fake_token_around_image><row_r_col_c>` around each tile in the prompt.

The code itself stays where it was written (files.py reads the folder, processor.py cuts
tiles, prompt.py lays out the grid); this module is the one place that names it as the
SmolVLM family's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .. import files, processor, prompt


class SmolVLMFamily:
    name = "SmolVLM"
    graph_inputs: dict[str, tuple[str, ...]] = {}  # the defaults (runtime.EXPECTED_INPUTS) are SmolVLM's
    model_types = ("idefics3", "smolvlm")

    def read_image_processor(self, folder: Path, processor_config: dict) -> files.ImageProcessorConfig:
        return files.read_image_processor(folder, processor_config)

    def image_seq_len(self, config: dict, processor_config: dict, folder: Path) -> int:
        return files.image_seq_len(config, processor_config, folder)

    def preprocess(self, images: Sequence[Image.Image], cfg: files.ImageProcessorConfig,
                   longest_edge: int | None = None) -> processor.ProcessedImages:
        return processor.preprocess(images, cfg, longest_edge)

    def text_config(self, config: dict) -> dict:
        return config.get("text_config", {})

    def image_placeholder(self, rows: int, cols: int, seq_len: int) -> str:
        return prompt.image_placeholder(rows, cols, seq_len)

    def vision_feeds(self, pixel_values: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"pixel_values": pixel_values, "pixel_attention_mask": mask}


SMOLVLM = SmolVLMFamily()
