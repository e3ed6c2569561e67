"""Build the three graphs from a checkpoint's weights, without torch.

One path for everyone: `models pull` and `models import` on a user's machine (weights read
from model.safetensors with numpy), and the developer's `models export` (weights taken from the
loaded transformers model, then every graph checked against it). The graph builders are the
hand-written ones in decoder.py and vision.py; a model they cannot write (`unsupported`) needs
the PyTorch export instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from . import decoder, vision
from .config import CheckpointConfig, read_config
from .layout import DECODER_GRAPH, EMBED_GRAPH, GRAPHS, QUANTIZATIONS, VISION_GRAPH, ExportError, copy_side_files, normalise
from .quantize import quantize_variants
from .weights import read_safetensors

# Called with (what is being done, steps done, steps in all) as each graph is written.
StepCallback = Callable[[str, int, int], None]


def unsupported(config: CheckpointConfig) -> dict[str, str]:
    """Graph name -> why it cannot be written by hand (empty when all three can)."""
    reasons = {VISION_GRAPH: vision.unsupported_reason(config.vision),
               DECODER_GRAPH: decoder.unsupported_reason(config.text)}
    return {name: reason for name, reason in reasons.items() if reason}


def build_graphs(config: CheckpointConfig, weights: Mapping[str, np.ndarray], onnx_dir: Path, opset: int = 17,
                 skip: Sequence[str] = (), on_step: StepCallback | None = None) -> None:
    """Write the fp32 graphs not in `skip` into `onnx_dir`, byte-stable (normalised)."""
    builders = {
        VISION_GRAPH: lambda path: vision.build_vision(config.vision, config.scale_factor, weights, path, opset),
        EMBED_GRAPH: lambda path: vision.build_embed(weights, path, opset),
        DECODER_GRAPH: lambda path: decoder.build_decoder(config.text, weights, path, opset,
                                                          tied=config.tie_word_embeddings),
    }
    todo = [name for name in GRAPHS if name not in skip]
    for done, name in enumerate(todo):
        if on_step:
            on_step(f"writing {name}.onnx", done, len(todo))
        path = onnx_dir / f"{name}.onnx"
        try:
            builders[name](path)
        except KeyError as exc:
            raise ExportError(f"the checkpoint has no tensor {exc.args[0]}: not a SmolVLM checkpoint "
                              "this app can build") from None
        normalise(path)


def build_from_safetensors(src: Path, dst: Path, quantize: Sequence[str] = ("int8",), opset: int = 17,
                           on_step: StepCallback | None = None) -> None:
    """A transformers checkpoint folder (config.json, model.safetensors, tokenizer and
    processor files) -> a model folder `dst` in the official layout, fp32 graphs plus the
    `quantize` variants. Needs numpy, onnx and onnxruntime; no torch, no transformers."""
    src, dst = Path(src), Path(dst)
    check_quantizations(quantize)
    config = read_config(src)
    reasons = unsupported(config)
    if reasons:
        raise ExportError(f"{src}: cannot build this model without PyTorch: {'; '.join(reasons.values())}")
    weights = read_safetensors(src)
    onnx_dir = dst / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    steps = len(GRAPHS) * (1 + len(quantize))

    def step(what: str, done: int, _total: int) -> None:
        if on_step:
            on_step(what, done, steps)

    build_graphs(config, weights, onnx_dir, opset, on_step=step)
    quantize_variants(onnx_dir, quantize, config.text,
                      on_step=lambda what, done, total: step(what, len(GRAPHS) + done, steps))
    copy_side_files(src, dst)
    if on_step:
        on_step("done", steps, steps)


def check_quantizations(quantize: Sequence[str]) -> None:
    unknown = [q for q in quantize if q not in QUANTIZATIONS]
    if unknown:
        raise ExportError(f"unknown quantization {unknown}; choose from {list(QUANTIZATIONS)}")

