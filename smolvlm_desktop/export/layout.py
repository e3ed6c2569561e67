"""What every exporter writes: the graph names, the side files, normalised ONNX bytes.

Shared by the PyTorch export (checkpoint.py), the quantisers (quantize.py) and the graph
builders, so each name and each rule lives in one place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..engine.types import EngineError

VISION_GRAPH = "vision_encoder"
EMBED_GRAPH = "embed_tokens"
DECODER_GRAPH = "decoder_model_merged"
GRAPHS = (VISION_GRAPH, EMBED_GRAPH, DECODER_GRAPH)
QUANTIZATIONS = ("int8", "uint8")

# Files copied verbatim from the checkpoint when present (the engine reads them).
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)


class ExportError(EngineError):
    """The export could not be done or produced a graph that does not match PyTorch."""


def normalise(path: Path) -> None:
    """Rewrite the ONNX file at `path` as `save_normalised` would write it."""
    import onnx

    save_normalised(onnx.load(str(path)), path)


def save_normalised(model: Any, path: Path) -> None:
    """Save `model` without the doc strings, producer metadata and intermediate shapes that can
    differ between runs or machines (ONNX Runtime re-infers the shapes; storing them only adds
    bytes). In place, so a graph of weights is never held twice more than the save needs."""
    import onnx

    model.doc_string = ""
    model.graph.doc_string = ""
    del model.metadata_props[:]
    for node in model.graph.node:
        node.doc_string = ""
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def copy_side_files(src: Path, dst: Path) -> None:
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
