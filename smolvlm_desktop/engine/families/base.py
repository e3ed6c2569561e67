"""What a model family must provide: everything that differs between, say, SmolVLM and FastVLM.

The engine (model.py, generate.py, conversation.py, features.py) is shared by every family:
the three ONNX Runtime sessions, the KV cache and decode loop, batching, streaming, cancel,
timings, the feature cache and the conversation cache. A family only says how its model
folder, its pictures and its prompt look:

- which folders it reads (`model_types`: config.json's model_type values);
- its image processor settings, read from the folder into the shared ImageProcessorConfig
  (`read_image_processor`), and how many image tokens one vision pass gives (`image_seq_len`);
- where config.json keeps the language model's settings (`text_config`);
- how a picture becomes vision-graph input (`preprocess`: tiles, or one padded square);
- what text stands for one picture in the prompt (`image_placeholder`, given the grid that
  `preprocess` returned and image_seq_len);
- the vision graph's input names (`vision_feeds`, and `graph_inputs` for the check on load).

The graphs themselves keep the one layout (onnx/vision_encoder*.onnx, embed_tokens*.onnx,
decoder_model_merged*.onnx; decoder inputs inputs_embeds/attention_mask/position_ids/past_key_values.*),
which is what the official ONNX releases of both families use; the decoder's cache shapes
are read from the graph (generate.CacheLayout), so a new text model needs no code there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ..files import ImageProcessorConfig
    from ..processor import ProcessedImages


class Family(Protocol):
    """One model family (see the module docstring for what each member is for)."""

    name: str  # shown to the user: "SmolVLM", "FastVLM"
    model_types: tuple[str, ...]  # config.json model_type values this family reads
    graph_inputs: dict[str, tuple[str, ...]]  # inputs a graph must have, where not SmolVLM's

    def read_image_processor(self, folder: Path, processor_config: dict) -> "ImageProcessorConfig":
        """The image processor settings, as the folder states them."""
        ...

    def image_seq_len(self, config: dict, processor_config: dict, folder: Path) -> int:
        """Image tokens per vision pass (per tile)."""
        ...

    def preprocess(self, images: Sequence[Image.Image], cfg: "ImageProcessorConfig",
                   longest_edge: int | None = None) -> "ProcessedImages":
        """Pictures -> vision-graph pixels [1, passes, 3, H, W], a mask, and a grid per picture."""
        ...

    def text_config(self, config: dict) -> dict:
        """The language model's settings (hidden_size, max_position_embeddings, ...) in config.json."""
        ...

    def image_placeholder(self, rows: int, cols: int, seq_len: int) -> str:
        """The prompt text that replaces one `<image>` of the chat template."""
        ...

    def vision_feeds(self, pixel_values: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The vision graph's inputs for one pass (pixel_values [1, 1, 3, H, W] and its mask)."""
        ...
