"""int8 / uint8 variants of the fp32 graphs: what ONNX Runtime's quantisers write, without them.

Needs numpy, onnx and onnxruntime (its 8-bit block kernel) only: this runs on a user's machine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.files import PROMPT_GRAPH_SUFFIX
from .layout import DECODER_GRAPH, GRAPHS, save_normalised


def quantize_graph(fp32_path: Path, out_path: Path, kind: str) -> None:
    """Dynamic quantisation of the weights (MatMul and Gather) to int8 or uint8.

    What onnxruntime.quantization.quantize_dynamic writes, with its defaults (per tensor; int8
    weights symmetric, uint8 ones and the Gather table asymmetric uint8; activations quantised
    at run time by DynamicQuantizeLinear), done here with numpy: checked to give the same
    tensors and nodes. Why not call it: onnxruntime.quantization imports
    onnxruntime.transformers, which puts its own folder on sys.path and imports its modules
    by bare name, which a frozen (installed) app cannot do; and the graphs are now built there.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    added: dict[str, Any] = {}
    activations: dict[str, list[str]] = {}
    nodes: list[Any] = []

    def weight(name: str, qtype: str, symmetric: bool) -> list[str]:
        names = [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"]
        if names[0] not in added:
            arrays = _quantize_tensor(numpy_helper.to_array(floats[name]), qtype, symmetric)
            added.update({n: numpy_helper.from_array(a, n) for n, a in zip(names, arrays)})
        return names

    for node in graph.node:
        out = node.output[0]
        if node.op_type == "MatMul" and node.input[1] in floats and len(floats[node.input[1]].dims) == 2:
            a = node.input[0]
            if a not in activations:  # quantised once however many MatMuls read it
                activations[a] = [f"{a}_quantized", f"{a}_scale", f"{a}_zero_point"]
                nodes.append(helper.make_node("DynamicQuantizeLinear", [a], activations[a], name=f"{a}_QuantizeLinear"))
            a_q, a_scale, a_zp = activations[a]
            b_q, b_scale, b_zp = weight(node.input[1], kind, symmetric=kind == "int8")
            product, scales = f"{out}_output_quantized", f"{node.name}_quant_scales_mul:0"
            nodes += [
                helper.make_node("MatMulInteger", [a_q, b_q, a_zp, b_zp], [product], name=f"{node.name}_quant"),
                helper.make_node("Cast", [product], [f"{product}_cast_output"], name=f"{product}_cast",
                                 to=TensorProto.FLOAT),
                helper.make_node("Mul", [a_scale, b_scale], [scales], name=f"{node.name}_quant_scales_mul"),
                helper.make_node("Mul", [f"{product}_cast_output", scales], [out],
                                 name=f"{node.name}_quant_output_scale_mul"),
            ]
        elif node.op_type == "Gather" and node.input[0] in floats:
            b_q, b_scale, b_zp = weight(node.input[0], "uint8", symmetric=False)
            gather = helper.make_node("Gather", [b_q, *node.input[1:]], [f"{out}_quantized"], name=node.name)
            gather.attribute.extend(node.attribute)
            nodes += [gather, helper.make_node("DequantizeLinear", [f"{out}_quantized", b_scale, b_zp], [out],
                                               name=f"{out}_DequantizeLinear")]
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    used |= {name for node in nodes for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH
             for inner in attr.g.node for name in inner.input}  # If branches read outer names too
    kept = [t for t in graph.initializer if t.name in used]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + list(added.values()))
    save_normalised(model, out_path)


# numpy type, full range, and the symmetric range of a signed type (onnxruntime.quantization's).
_QUANT_TYPES = {"int8": (np.int8, (-128, 127), (-127, 127)), "uint8": (np.uint8, (0, 255), (0, 255))}


def _quantize_tensor(data: np.ndarray, qtype: str, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantised data, scale, zero point) per tensor, as onnxruntime.quantization's
    quantize_data computes them: the range always holds 0; scale in float64, stored float32;
    values rounded half to even and clipped to the type."""
    dtype, full, sym = _QUANT_TYPES[qtype]
    qmin, qmax = sym if symmetric else full
    rmin = min(float(data.min(initial=0.0)), 0.0)
    rmax = max(float(data.max(initial=0.0)), 0.0)
    if symmetric:
        rmin, rmax = -max(-rmin, rmax), max(-rmin, rmax)
    scale64 = (np.float64(np.float32(rmax)) - np.float64(np.float32(rmin))) / (qmax - qmin)
    if scale64 < np.finfo(np.float32).tiny:
        scale, zero = np.array(1.0, np.float32), np.array(0, dtype)
    else:
        scale = np.array(scale64, np.float32)
        zero_value = (qmin + qmax) / 2.0 if symmetric else qmin - np.float32(rmin) / scale64
        zero = np.array(np.round(zero_value), dtype)
    quantised = (data.astype(np.float32) / scale).round() + zero
    return np.clip(quantised, *full).astype(dtype), scale, zero


# MatMulNBits block sizes to try for the decoder's int8 file, largest first: the first that
# divides every matrix's input size is used, so no block is padded (SmolVLM-256M's 576 takes
# 64). A dimension smaller than every block (the tiny demo model's 8) takes the smallest.
DECODER_WEIGHT_BLOCKS = (128, 64, 32, 16)


def decoder_weight_block(text_config: Any) -> int:
    """The block size for the decoder's MatMulNBits weights (see DECODER_WEIGHT_BLOCKS)."""
    heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
    inputs = {int(text_config.hidden_size), int(text_config.intermediate_size), heads * head_dim}
    return next((b for b in DECODER_WEIGHT_BLOCKS if all(k % b == 0 for k in inputs)), DECODER_WEIGHT_BLOCKS[-1])


def quantize_decoder_weights(fp32_path: Path, out_path: Path, block: int) -> None:
    """The decoder's int8 variant: 8-bit block-wise weights (MatMulNBits, accuracy level 4:
    the activations are quantised per row and block inside the op), not per-tensor dynamic
    quantisation.

    Why, measured on the random-weight 256M (2 threads, AVX-512 VNNI): the logits stay closer
    to fp32 (cosine 0.9993 vs 0.9968, top-1 agreement 0.95 vs 0.92 over 60 positions), and each
    row of a batch is quantised on its own, so a caption does not depend on the images that
    share its decoding batch (with dynamic quantisation's one scale per tensor, a row's logits
    moved by up to 17 when decoded beside three others; here by 6e-5). Speed is the same
    within noise (7.9 vs 8.1 ms per step, interleaved A/B; block 128, padded, 8.4 ms). The
    vision graph stays dynamic int8, which was faster there (512 vs 745 ms per tile). Needs
    ONNX Runtime 1.23+ (8-bit kernels on x64 came in 1.22, on ARM64 in 1.23).

    Written here rather than with onnxruntime.quantization's MatMulNBitsQuantizer, which does
    the same with the same kernel (quantize_matmul_8bits, in the runtime itself) but imports
    onnx_ir and sympy (80 MB), too much to ship for this: the graphs are built at a user's."""
    _replace_weight_matmuls(fp32_path, out_path, lambda node, weight: _nbits_matmul(node, weight, block))


def quantize_decoder_prompt_weights(fp32_path: Path, out_path: Path, block: int) -> None:
    """The decoder's int8 *prompt* graph (PROMPT_GRAPH_SUFFIX): the same decoder, its layers'
    weights int8 per output column and each activation row quantised on its own at run time,
    multiplied by ONNX Runtime's QGEMM (MatMulIntegerToFloat; VNNI and AMX kernels).

    Why a second graph: MatMulNBits is the fastest form for one row (a decoding step) but
    slow for many (an 878-token prompt: 178 vs 2,670 GOP/s on a Xeon with AMX; 5.7 vs 2.5 ms
    for one 878x576x1536 product on an EPYC with AVX-512 VNNI; 338 vs 117 million
    instructions on the AVX2 kernels, counted under valgrind). The per-row steps make it the
    slower one for a single row (0.030 vs 0.018 ms), so prompts of many tokens are read with this graph and the
    answer decoded with the other (engine/generate.py, PROMPT_GRAPH_MIN_TOKENS).

    Why per row and not DynamicQuantizeMatMul's one scale per tensor (a little faster): a
    row's numbers then depend only on that row, so a prompt read in two pieces equals one
    read, and a token whose activations are far larger than the others' (language models
    have such tokens, often the first) does not flatten every other token's precision.
    Symmetric, with a fixed zero point of 128 in uint8 so that ONNX Runtime's u8s8 kernels
    apply. The head (one row after logits_to_keep) stays MatMulNBits as in the decode graph."""
    def replace(node: Any, weight: np.ndarray) -> tuple[list[Any], list[Any]]:
        if HEAD_OUTPUT in node.output:
            return _nbits_matmul(node, weight, block)
        return _per_row_int8_matmul(node, weight)

    _replace_weight_matmuls(fp32_path, out_path, replace)


# The decoder's output that the head MatMul writes (one row in a prompt, by logits_to_keep).
HEAD_OUTPUT = "logits"
# Shared constants of the per-row subgraphs (one copy each in the graph).
_PER_ROW_CONSTANTS = {
    "per_row/q_max": np.array(127, np.float32), "per_row/tiny": np.array(1e-30, np.float32),
    "per_row/one": np.array(1, np.float32), "per_row/zero_point": np.array(128, np.uint8),
    "per_row/rows": np.array([-1], np.int64), "per_row/column": np.array([-1, 1], np.int64),
    "per_row/start": np.array([0], np.int64), "per_row/last": np.array([-1], np.int64),
}


def _replace_weight_matmuls(fp32_path: Path, out_path: Path,
                            replace: Callable[[Any, np.ndarray], tuple[list[Any], list[Any]]]) -> None:
    """Rewrite each MatMul by a 2-D weight initializer with `replace(node, weight)`'s nodes and
    initializers; keep everything else; save normalised."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes: list[Any] = []
    added: dict[str, Any] = {}
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        new_nodes, new_tensors = replace(node, numpy_helper.to_array(weight).astype(np.float32))
        nodes += new_nodes
        added.update({t.name: t for t in new_tensors})
    used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + list(added.values()))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    save_normalised(model, out_path)


def _nbits_matmul(node: Any, weight: np.ndarray, block: int) -> tuple[list[Any], list[Any]]:
    """One MatMul as MatMulNBits: 8-bit block-wise symmetric weights, accuracy level 4."""
    from onnx import helper, numpy_helper

    packed, scales = _blockwise_int8(weight, block)
    k, n = weight.shape
    name = node.input[1]
    tensors = [numpy_helper.from_array(packed, f"{name}_Q8"), numpy_helper.from_array(scales, f"{name}_scales")]
    matmul = helper.make_node("MatMulNBits", [node.input[0], tensors[0].name, tensors[1].name], list(node.output),
                              name=f"{node.name}_Q8", domain="com.microsoft", K=k, N=n, bits=8,
                              block_size=block, accuracy_level=4)
    return [matmul], tensors


def _per_row_int8_matmul(node: Any, weight: np.ndarray) -> tuple[list[Any], list[Any]]:
    """One MatMul as: each row of x quantised on its own (symmetric, scale max|row|/127, uint8
    with zero point 128), times int8 weights quantised per column, by MatMulIntegerToFloat
    (which applies the column scales inside the QGEMM), then times the row scales.

    Written for as few passes over the activations as ONNX Runtime allows (measured, 875 x
    576 x 1536, CPU time): ReduceMax and ReduceMin rather than Abs (0.10 vs 0.13 ms), one
    QuantizeLinear per row (per-axis on the rows flattened to 2-D, so any batch works), and
    one Mul after the product; about 1.3x the CPU time of the per-tensor
    DynamicQuantizeMatMul, which cannot keep rows apart."""
    from onnx import TensorProto, helper, numpy_helper

    x, (y,) = node.input[0], node.output
    name, k, n = node.input[1], *weight.shape
    column_max = np.abs(weight).max(axis=0)
    column_scale = np.where(column_max > 0, column_max / 127.0, 1.0).astype(np.float32)
    quantised = np.clip(np.round(weight / column_scale), -127, 127).astype(np.int8)
    tensors = [numpy_helper.from_array(quantised, f"{name}_int8"),
               numpy_helper.from_array(column_scale, f"{name}_column_scale"),
               numpy_helper.from_array(np.array([-1, k], np.int64), f"per_row/flat_{k}"),
               numpy_helper.from_array(np.array([n], np.int64), f"per_row/width_{n}"),
               *(numpy_helper.from_array(v, c) for c, v in _PER_ROW_CONSTANTS.items())]
    t = {s: f"{node.name}/per_row/{s}" for s in (
        "max", "min", "neg_min", "amax", "scale", "scales", "zero_points_shape", "zero_points", "rows",
        "quantised", "product", "row_scales", "scaled", "x_shape", "lead", "y_shape")}
    nodes = [
        helper.make_node("ReduceMax", [x], [t["max"]], name=t["max"], axes=[-1], keepdims=1),
        helper.make_node("ReduceMin", [x], [t["min"]], name=t["min"], axes=[-1], keepdims=1),
        helper.make_node("Neg", [t["min"]], [t["neg_min"]], name=t["neg_min"]),
        helper.make_node("Max", [t["max"], t["neg_min"], "per_row/tiny"], [t["amax"]], name=t["amax"]),
        helper.make_node("Div", [t["amax"], "per_row/q_max"], [t["scale"]], name=t["scale"]),
        helper.make_node("Reshape", [t["scale"], "per_row/rows"], [t["scales"]], name=t["scales"]),
        helper.make_node("Shape", [t["scales"]], [t["zero_points_shape"]], name=t["zero_points_shape"]),
        helper.make_node("ConstantOfShape", [t["zero_points_shape"]], [t["zero_points"]], name=t["zero_points"],
                         value=helper.make_tensor("value", TensorProto.UINT8, [1], [128])),
        helper.make_node("Reshape", [x, f"per_row/flat_{k}"], [t["rows"]], name=t["rows"]),
        helper.make_node("QuantizeLinear", [t["rows"], t["scales"], t["zero_points"]], [t["quantised"]],
                         name=t["quantised"], axis=0),
        helper.make_node("MatMulIntegerToFloat", [t["quantised"], tensors[0].name, "per_row/one", tensors[1].name,
                                                  "per_row/zero_point"], [t["product"]], name=t["product"],
                         domain="com.microsoft"),
        helper.make_node("Reshape", [t["scale"], "per_row/column"], [t["row_scales"]], name=t["row_scales"]),
        helper.make_node("Mul", [t["product"], t["row_scales"]], [t["scaled"]], name=t["scaled"]),
        helper.make_node("Shape", [x], [t["x_shape"]], name=t["x_shape"]),
        helper.make_node("Slice", [t["x_shape"], "per_row/start", "per_row/last"], [t["lead"]], name=t["lead"]),
        helper.make_node("Concat", [t["lead"], f"per_row/width_{n}"], [t["y_shape"]], name=t["y_shape"], axis=0),
        helper.make_node("Reshape", [t["scaled"], t["y_shape"]], [y], name=f"{node.name}/per_row/output"),
    ]
    return nodes, tensors


def _blockwise_int8(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float32 -> MatMulNBits' B ([N, K/block, block] uint8) and scales ([N, K/block]),
    symmetric, with ONNX Runtime's own kernel."""
    try:
        from onnxruntime.capi._pybind_state import quantize_matmul_8bits
    except ImportError:
        import onnxruntime

        from .layout import ExportError

        raise ExportError(f"ONNX Runtime {onnxruntime.__version__} cannot write 8-bit block weights "
                          "(quantize_matmul_8bits); install onnxruntime 1.23 or newer") from None

    rows, cols = weight.shape
    blocks = -(-rows // block)
    padded = np.ascontiguousarray(np.pad(weight, ((0, blocks * block - rows), (0, 0))))
    packed = np.zeros((cols, blocks, block), np.uint8)
    scales = np.zeros((cols, blocks), np.float32)
    zero_points = np.zeros((cols, blocks), np.uint8)  # unused: symmetric
    quantize_matmul_8bits(packed, padded, scales, zero_points, block, cols, rows, True)
    return packed, scales


def quantize_jobs(kinds: Sequence[str]) -> list[tuple[str, str]]:
    """(graph, kind) for each file quantize_variants writes: every graph in every kind, and the
    int8 decoder's prompt graph (kind "int8_prompt")."""
    jobs = [(name, kind) for kind in kinds for name in GRAPHS]
    return jobs + [(DECODER_GRAPH, kind + PROMPT_GRAPH_SUFFIX) for kind in kinds if kind == "int8"]


def quantize_variants(onnx_dir: Path, kinds: Sequence[str], text_config: Any,
                      on_step: Callable[[str, int, int], None] | None = None) -> None:
    """Write each fp32 graph's `kinds` variants next to it: the decoder's int8 as MatMulNBits
    (quantize_decoder_weights) plus its prompt graph (quantize_decoder_prompt_weights),
    everything else with dynamic quantisation."""
    jobs = quantize_jobs(kinds)
    block = decoder_weight_block(text_config)
    for done, (name, kind) in enumerate(jobs):
        if on_step:
            on_step(f"quantising {name} to {kind}", done, len(jobs))
        source, target = onnx_dir / f"{name}.onnx", onnx_dir / f"{name}_{kind}.onnx"
        if name == DECODER_GRAPH and kind == "int8":
            quantize_decoder_weights(source, target, block)
        elif name == DECODER_GRAPH and kind == "int8" + PROMPT_GRAPH_SUFFIX:
            quantize_decoder_prompt_weights(source, target, block)
        else:
            quantize_graph(source, target, kind)
