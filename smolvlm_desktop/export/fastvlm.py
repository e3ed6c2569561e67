"""FastVLM (Apple; transformers' FastVlmForConditionalGeneration) -> this project's graphs.

The same three files, names and inputs as onnx-community/FastVLM-0.5B-ONNX
(docs/FASTVLM_FORMAT.md), written the way the SmolVLM exporter writes its own:

* ``decoder_model_merged.onnx``: op by op by export.decoder, the very graph SmolVLM's decoder
  gets (GroupQueryAttention writing its KV cache in place, fused RMSNorm and rotary, the
  optional ``logits_to_keep``, 8-bit block weights in its int8 file), with what Qwen2 adds:
  biases on q, k and v, its RoPE theta (10^6 for FastVLM-0.5B), its 151,936-token vocabulary,
  and the LM head tied or not as the checkpoint has it. From numpy weights: no torch.
* ``embed_tokens.onnx``: one Gather (export.vision.build_embed).
* ``vision_encoder.onnx``: FastViTHD (timm's ``fastvit_mci3``) and the projector, traced by
  torch.onnx from transformers' own modules, so it needs torch, torchvision and timm; then its
  1x1 convolutions are rewritten as MatMuls (``pointwise_convs_as_matmuls``), so that its int8
  file can run them on 8-bit GEMM kernels. Why not op by op like SigLIP: the encoder is five
  stages of re-parameterised convolutions (RepMixer, large-kernel patch embeddings,
  conditional position encodings, a squeeze-excite head) that trace to the same plain
  Conv/Mul/Add/MatMul nodes a hand-written graph would have, and ONNX Runtime fuses their
  GELU and attention patterns when the session loads; a numpy builder would only drop the
  torch dependency, at the cost of re-implementing timm.

Every fp32 graph is checked against the unmodified transformers model before
``export_fastvlm`` returns (``ExportError`` on a mismatch), as export.checkpoint does for
SmolVLM. The int8 variants: ``quantize_fastvlm``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import decoder, vision
from .config import config_namespace
from .layout import (DECODER_GRAPH, EMBED_GRAPH, VISION_GRAPH, ExportError, copy_side_files, normalise,
                     save_normalised)

MODEL_TYPES = ("fast_vlm", "llava_qwen2")
# transformers' Qwen2Config defaults: a released config leaves out what equals them.
_QWEN2_DEFAULTS: dict[str, Any] = {
    "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None,
    "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "rope_parameters": None, "rope_scaling": None, "use_sliding_window": False, "layer_types": None,
    "tie_word_embeddings": False,
}
# Where a checkpoint keeps the language model, by the name of its embedding: transformers'
# FastVlmForConditionalGeneration, and Apple's own llava_qwen2 checkpoints (apple/FastVLM-*).
_TEXT_PREFIXES = ("model.language_model.", "model.")


@dataclass(frozen=True)
class FastVlmCheckpoint:
    """What the graph builders need from a FastVLM config.json."""

    model_type: str
    text: Any  # attributes as in transformers' Qwen2Config
    tie_word_embeddings: bool
    crop: int  # the square the vision graph reads (preprocessor_config.json's crop), pixels


def is_fastvlm(folder: Path) -> bool:
    """Whether `folder`'s config.json is a FastVLM one (either form)."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") in MODEL_TYPES


def read_fastvlm_config(folder: Path) -> FastVlmCheckpoint:
    """config.json (nested fast_vlm or flat llava_qwen2) and the crop of preprocessor_config.json."""
    folder = Path(folder)
    try:
        data = json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder}: no readable config.json ({exc})") from None
    if not isinstance(data, dict) or data.get("model_type") not in MODEL_TYPES:
        found = data.get("model_type") if isinstance(data, dict) else None
        raise ExportError(f"{folder}: not a FastVLM checkpoint (model_type {found!r})")
    nested = data.get("text_config")
    raw = dict(nested) if isinstance(nested, dict) else dict(data)  # llava_qwen2 keeps it flat
    text = config_namespace({k: v for k, v in raw.items() if k in _QWEN2_DEFAULTS}, _QWEN2_DEFAULTS, "text_config")
    text.model_type = "qwen2"
    # As FastVlmConfig.__post_init__: the top-level flag, or the text config's where it ties.
    tie = bool(data.get("tie_word_embeddings", False)) or bool(raw.get("tie_word_embeddings", False))
    return FastVlmCheckpoint(str(data["model_type"]), text, tie, _crop(folder))


def _crop(folder: Path) -> int:
    from ..engine.families.fastvlm import parse_clip_processor

    path = folder / "preprocessor_config.json"
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return 1024  # FastVLM's (transformers' conversion script)
    return parse_clip_processor(raw, path).tile_size


def text_prefix(weights: Mapping[str, np.ndarray]) -> str:
    """The prefix of the language model's tensors in this checkpoint."""
    names = set(weights)  # by name: `in` on a lazy checkpoint would read the tensor
    for prefix in _TEXT_PREFIXES:
        if f"{prefix}embed_tokens.weight" in names:
            return prefix
    raise ExportError("no language model embedding (model.language_model.embed_tokens.weight or "
                      "model.embed_tokens.weight): not a FastVLM checkpoint this app can build")


class TextWeights(Mapping[str, np.ndarray]):
    """The language model's tensors under the names export.decoder and export.vision.build_embed
    read (SmolVLM's ``model.text_model.``), without copying a byte: one builder for both families.
    Whether a tensor exists is answered from the names, never by reading it (a lazy checkpoint,
    export.weights.SafetensorsWeights, reads a tensor from disk on every lookup)."""

    def __init__(self, weights: Mapping[str, np.ndarray], prefix: str) -> None:
        self._weights, self._prefix, self._names = weights, prefix, set(weights)

    def _source(self, name: str) -> str:
        if name.startswith(decoder.TEXT_PREFIX):
            return self._prefix + name[len(decoder.TEXT_PREFIX):]
        return name

    def __getitem__(self, name: str) -> np.ndarray:
        return self._weights[self._source(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._source(name) in self._names

    def __iter__(self) -> Iterator[str]:
        for name in self._weights:
            if name.startswith(self._prefix):
                yield decoder.TEXT_PREFIX + name[len(self._prefix):]
            elif name == "lm_head.weight":
                yield name

    def __len__(self) -> int:
        return sum(1 for _ in self)


def build_text_graphs(config: FastVlmCheckpoint, weights: Mapping[str, np.ndarray], onnx_dir: Path,
                      opset: int = 17) -> None:
    """embed_tokens.onnx and decoder_model_merged.onnx from the checkpoint's tensors (numpy)."""
    reason = decoder.unsupported_reason(config.text)
    if reason:
        raise ExportError(f"the FastVLM language model cannot be written: {reason}")
    text = TextWeights(weights, text_prefix(weights))
    try:
        vision.build_embed(text, onnx_dir / f"{EMBED_GRAPH}.onnx", opset)
        decoder.build_decoder(config.text, text, onnx_dir / f"{DECODER_GRAPH}.onnx", opset,
                              tied=config.tie_word_embeddings)
    except KeyError as exc:
        raise ExportError(f"the checkpoint has no tensor {exc.args[0]}: not a FastVLM checkpoint "
                          "this app can build") from None


# --- the vision graph (torch) ------------------------------------------------------------------
def _vision_module(lm: Any) -> Any:
    """FastVlmModel.get_image_features as a module that owns the tower and projector, so their
    weights are exported as initializers (which the quantiser reads), not as constants."""
    import torch

    class VisionEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = lm.model.vision_tower
            self.projector = lm.model.multi_modal_projector

        def forward(self, pixel_values: Any) -> Any:
            hidden = self.tower(pixel_values, return_dict=True).last_hidden_state
            return self.projector(hidden.flatten(2).permute(0, 2, 1))

    return VisionEncoder().eval()


def export_vision(lm: Any, path: Path, crop: int, opset: int = 17) -> None:
    """vision_encoder.onnx: pixel_values [batch, 3, crop, crop] -> image_features [batch, tokens, hidden]."""
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about the Python numbers it freezes
        torch.onnx.export(_vision_module(lm), (torch.rand(1, 3, crop, crop),), str(path),
                          input_names=["pixel_values"], output_names=["image_features"],
                          dynamic_axes={"pixel_values": {0: "batch_size"}, "image_features": {0: "batch_size"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    constants_to_initializers(path)
    pointwise_convs_as_matmuls(path)
    normalise(path)


def pointwise_convs_as_matmuls(path: Path) -> None:
    """Every 1x1 convolution (FastViTHD's MLPs: 95 of its 186 Conv nodes, ~85% of its
    operations) becomes Transpose to channels-last, MatMul, bias Add, Transpose back.

    Why: the int8 variant can then run them on ONNX Runtime's 8-bit GEMM kernels, which
    quantise only MatMul weights (its ConvInteger took 134 s where the fp32 Conv took 12 s on
    FastVLM-0.5B's encoder). The same numbers up to the order of the sums; fp32 runs as fast
    either way, and ONNX Runtime's transpose optimiser cancels the transposes between two
    such products (fc1 -> GELU -> fc2), so a block pays two."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, added = [], []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = weights.get(node.input[1]) if node.op_type == "Conv" else None
        pointwise = (weight is not None and list(weight.dims[2:]) == [1, 1] and attrs.get("group", 1) == 1
                     and set(attrs.get("strides", [1])) == {1} and set(attrs.get("pads", [0])) == {0}
                     and set(attrs.get("dilations", [1])) == {1} and len(weight.dims) == 4)
        if not pointwise:
            nodes.append(node)
            continue
        name, out = node.name or node.output[0], node.output[0]
        matrix = numpy_helper.to_array(weight)[:, :, 0, 0].T  # [in, out]
        added.append(numpy_helper.from_array(np.ascontiguousarray(matrix), f"{weight.name}_matrix"))
        last = f"{name}_nhwc"
        nodes.append(helper.make_node("Transpose", [node.input[0]], [last], name=f"{name}_to_nhwc", perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("MatMul", [last, added[-1].name], [f"{name}_product"], name=f"{name}_matmul"))
        last = f"{name}_product"
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [last, node.input[2]], [f"{name}_biased"], name=f"{name}_bias"))
            last = f"{name}_biased"
        nodes.append(helper.make_node("Transpose", [last], [out], name=f"{name}_to_nchw", perm=[0, 3, 1, 2]))
    used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]  # the 4-D kernels are no longer read
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + added)
    onnx.save(model, str(path))


def constants_to_initializers(path: Path) -> None:
    """Constant nodes holding a matrix or more become initializers, as in the official files:
    what constant folding computes (a re-parameterised kernel, say) the tracer writes as a
    node, which the quantiser would not see."""
    import onnx

    model = onnx.load(str(path))
    kept, moved = [], []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and len(value.t.dims) >= 2:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            moved.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(moved)
    onnx.save(model, str(path))


# --- the whole export --------------------------------------------------------------------------
def load_fastvlm(src: Path) -> Any:
    """transformers' FastVlmForConditionalGeneration, fp32, eval, eager attention (needs timm)."""
    from .checkpoint import quiet_progress_bars, require_export_extra

    require_export_extra()
    import torch

    try:
        from transformers import FastVlmForConditionalGeneration
    except ImportError as exc:
        raise ExportError(f"this transformers has no FastVLM (FastVlmForConditionalGeneration): {exc}") from None
    try:
        from timm.layers import set_fused_attn  # the vision tower is timm's
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing against this torch
        raise ExportError("exporting FastVLM needs timm (its vision tower is timm's fastvit_mci3) and a "
                          f"torchvision that loads with this torch (scripts/fastvlm_reference.sh): {exc}") from None
    set_fused_attn(False)  # plain attention: what the tracer writes as MatMul/Softmax nodes
    with quiet_progress_bars():
        model = FastVlmForConditionalGeneration.from_pretrained(src, dtype=torch.float32,
                                                                attn_implementation="eager")
    return model.eval()


def export_fastvlm(src: Path, dst: Path, quantize: Sequence[str] = ("int8",), opset: int = 17,
                   lm: Any = None) -> dict[str, float]:
    """A transformers FastVLM checkpoint folder -> a model folder in the official layout:
    the three fp32 graphs (checked against transformers), their `quantize` variants, the side
    files. `lm` is the loaded model when the caller has it (it must be `src`'s). Returns each
    graph's largest difference from transformers."""
    from .build import check_quantizations
    from .checkpoint import verify_decoder, verify_embed
    from .weights import torch_weights

    src, dst = Path(src), Path(dst)
    check_quantizations(quantize)
    config = read_fastvlm_config(src)
    if lm is None:
        if config.model_type != "fast_vlm":
            raise ExportError(f"{src}: Apple's own llava_qwen2 checkpoint, which transformers does not load; "
                              "convert it to model_type fast_vlm first (transformers' "
                              "convert_fastvlm_weights_to_hf.py)")
        lm = load_fastvlm(src)
    onnx_dir = dst / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    build_text_graphs(config, torch_weights(lm), onnx_dir, opset)
    export_vision(lm, onnx_dir / f"{VISION_GRAPH}.onnx", config.crop, opset)
    diffs = {
        VISION_GRAPH: verify_vision(lm, _session(onnx_dir / f"{VISION_GRAPH}.onnx"), config.crop),
        EMBED_GRAPH: verify_embed(lm, _session(onnx_dir / f"{EMBED_GRAPH}.onnx")),
        DECODER_GRAPH: verify_decoder(lm, _session(onnx_dir / f"{DECODER_GRAPH}.onnx")),
    }
    quantize_fastvlm(onnx_dir, quantize, config.text)
    copy_side_files(src, dst)
    return diffs


# --- int8 ----------------------------------------------------------------------------------------
# MatMulNBits block for the vision graph's weights: divides every FastViTHD input size (96 ... 6144).
VISION_WEIGHT_BLOCK = 32


def quantize_fastvlm(onnx_dir: Path, kinds: Sequence[str], text_config: Any) -> None:
    """The `kinds` variants of the three graphs: what export.quantize writes for SmolVLM (the
    decoder's int8 as 8-bit block weights, MatMulNBits), except two int8 files:

    * the vision graph's MatMuls (its 1x1 convolutions among them) also as MatMulNBits, whose
      activations are quantised per row and block inside the op, not with one scale per
      tensor: on the full-size random encoder the image features' error against fp32 is 6.9%
      with it and 43% with one scale per tensor (10% with blocks of 128), on the tiny FastVLM
      the logits' cosine 0.9975 against 0.9936. It costs speed: FastVLM-0.5B's 1024-px pass
      took 18.8 s against 10.2 s with one scale per tensor (fp32 25.8 s, blocks of 128 15.7 s;
      interleaved runs on 2 cores at load 9);
    * the embedding as int8 rows, each with its own scale (quantize_embedding_rows).
    """
    from .quantize import quantize_decoder_weights, quantize_variants

    quantize_variants(onnx_dir, kinds, text_config)  # the decoder as SmolVLM's; the int8 files below replaced
    if "int8" in kinds:
        quantize_decoder_weights(onnx_dir / f"{VISION_GRAPH}.onnx", onnx_dir / f"{VISION_GRAPH}_int8.onnx",
                                 VISION_WEIGHT_BLOCK)
        quantize_embedding_rows(onnx_dir / f"{EMBED_GRAPH}.onnx", onnx_dir / f"{EMBED_GRAPH}_int8.onnx")


def quantize_embedding_rows(fp32_path: Path, out_path: Path) -> None:
    """embed_tokens as int8 rows, each with its own scale (symmetric): Gather the rows and their
    scales, Cast, Mul. Why not one scale for the table (export.quantize_graph's uint8): a row's
    error then depends on the largest value in the whole table; per row, on its own (the tiny
    FastVLM's embedding cosine to fp32 rose from 0.99935 to 0.99976). Plain ONNX ops, same size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    (gather,) = [n for n in graph.node if n.op_type == "Gather"]
    table = numpy_helper.to_array(next(t for t in graph.initializer if t.name == gather.input[0])).astype(np.float32)
    scale = np.abs(table).max(axis=1, keepdims=True) / np.float32(127)
    scale[scale == 0] = 1.0
    rows = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
    ids, out = gather.input[1], gather.output[0]
    graph.ClearField("initializer")
    graph.initializer.extend([numpy_helper.from_array(rows, "embed.rows_int8"),
                              numpy_helper.from_array(scale.astype(np.float32), "embed.row_scales")])
    graph.ClearField("node")
    graph.node.extend([
        helper.make_node("Gather", ["embed.rows_int8", ids], ["embed/rows"], name="/embed/Gather"),
        helper.make_node("Gather", ["embed.row_scales", ids], ["embed/scales"], name="/embed/GatherScales"),
        helper.make_node("Cast", ["embed/rows"], ["embed/rows_float"], name="/embed/Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["embed/rows_float", "embed/scales"], [out], name="/embed/Scale"),
    ])
    save_normalised(model, out_path)


def _session(path: Path) -> Any:
    from .checkpoint import _session as session

    return session(path)


def verify_vision(lm: Any, session: Any, crop: int, seed: int = 1) -> float:
    """Two pictures in one call, then the first alone, against get_image_features."""
    import torch

    from .checkpoint import _check

    pixels = torch.rand(2, 3, crop, crop, generator=torch.Generator().manual_seed(seed))
    worst = 0.0
    for batch, name in ((pixels, "vision_encoder.image_features"), (pixels[:1], "vision_encoder (one picture)")):
        with torch.no_grad():
            want = lm.model.get_image_features(pixel_values=batch).pooler_output
        (got,) = session.run(None, {"pixel_values": batch.numpy()})
        worst = max(worst, _check(name, got, want))
    return worst
