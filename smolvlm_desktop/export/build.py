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
from .layout import DECODER_GRAPH, EMBED_GRAPH, GRAPHS, QUANTIZATIONS, VISION_GRAPH, ExportError, copy_side_files
from .quantize import quantize_jobs, quantize_variants
from .weights import SafetensorsWeights, read_safetensors

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
            builders[name](path)  # each writes its file normalised (layout.save_normalised)
        except KeyError as exc:
            raise ExportError(f"the checkpoint has no tensor {exc.args[0]}: not a SmolVLM checkpoint "
                              "this app can build") from None


def build_from_safetensors(src: Path, dst: Path, quantize: Sequence[str] = ("int8",), opset: int = 17,
                           on_step: StepCallback | None = None) -> None:
    """A transformers checkpoint folder (config.json, model.safetensors, tokenizer and
    processor files) -> a model folder `dst` in the official layout, fp32 graphs plus the
    `quantize` variants. Needs numpy, onnx and onnxruntime; no torch, no transformers."""
    src, dst = Path(src), Path(dst)
    check_quantizations(quantize)
    from .fastvlm import is_fastvlm

    if is_fastvlm(src):
        raise ExportError(f"{src}: a FastVLM checkpoint; its vision tower (timm's FastViTHD) is exported with "
                          "PyTorch: use `smolvlm-desktop models export` with the export extra and timm")
    config = read_config(src)
    reasons = unsupported(config)
    if reasons:
        raise ExportError(f"{src}: cannot build this model without PyTorch: {'; '.join(reasons.values())}")
    weights = read_safetensors(src)
    check_graph_sizes(weights)
    onnx_dir = dst / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    steps = len(GRAPHS) + len(quantize_jobs(quantize))

    def step(what: str, done: int, _total: int) -> None:
        if on_step:
            on_step(what, done, steps)

    build_graphs(config, weights, onnx_dir, opset, on_step=step)
    quantize_variants(onnx_dir, quantize, config.text,
                      on_step=lambda what, done, total: step(what, len(GRAPHS) + done, steps))
    copy_side_files(src, dst)
    if on_step:
        on_step("done", steps, steps)


# One ONNX file holds at most 2 GiB (a protobuf limit); bigger graphs need external data files,
# which this builder does not write. SmolVLM-256M's largest graph is ~0.5 GB, 500M's ~1.7 GB;
# the 2.2B's decoder would be ~7 GB: for it, the official files.
MAX_GRAPH_BYTES = 2**31 - 2**26


def check_graph_sizes(weights: SafetensorsWeights) -> None:
    """ExportError, before any work, when a graph would be too big for one ONNX file."""
    sizes = {"vision_encoder": 0, "decoder_model_merged": 0}
    for name in weights:
        count = 4 * int(np.prod(weights.shape(name), dtype=np.int64))
        if name.startswith(("model.vision_model.", "model.connector.")):
            sizes["vision_encoder"] += count
        elif name.startswith("model.text_model."):  # the embedding's size: the LM head's, tied or not
            sizes["decoder_model_merged"] += count
    too_big = {graph: size for graph, size in sizes.items() if size > MAX_GRAPH_BYTES}
    if too_big:
        graph, size = max(too_big.items(), key=lambda item: item[1])
        raise ExportError(f"{graph}.onnx would hold {size / 1e9:.1f} GB of float32 weights, more than one "
                          "ONNX file can; this model is too large to build here (use its official ONNX files)")


def check_quantizations(quantize: Sequence[str]) -> None:
    unknown = [q for q in quantize if q not in QUANTIZATIONS]
    if unknown:
        raise ExportError(f"unknown quantization {unknown}; choose from {list(QUANTIZATIONS)}")

