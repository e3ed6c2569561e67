"""The vision encoder (and the token embedding) written op by op from numpy weights.

Why by hand: the graphs are built on the user's machine from model.safetensors, where there is
no torch to trace with. And for speed: traced as transformers writes them, each SigLIP layer's
attention becomes Reshape/Transpose, MatMul, Mul (scale), Add (mask), Softmax, MatMul, with
every intermediate a 12 x 1024 x 1024 float tensor for a 512-px tile, and the tanh GELU seven
elementwise passes over 1024 x 3072. ONNX Runtime's MultiHeadAttention does scale, mask and
softmax in one pass per head (measured 21.5 vs 27.5 ms per layer on a 512-px tile, 2 threads,
identical output), and FastGelu takes the fc1 bias in the same pass. After the build,
`skip_mask_when_all_real` lets attention run without the padding mask when no patch is
padding. On an execution provider without these ops, ONNX Runtime runs those nodes on the CPU.

The graph does what Idefics3Model.get_image_features does (all-zero padding images dropped,
patch mask, bucketed position ids, encoder, post-norm, pixel shuffle, projection), with the
same inputs and outputs as the official vision_encoder.onnx; `export.verify_vision` checks it
against the unmodified transformers model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .graph import MS_DOMAIN, Graph
from .layout import save_normalised

VISION_PREFIX = "model.vision_model."
PROJECTION = "model.connector.modality_projection.proj.weight"
EMBEDDING = "model.text_model.embed_tokens.weight"


def unsupported_reason(vision_config: Any) -> str | None:
    """None when the layers can be exported this way; otherwise what stands in the way."""
    if getattr(vision_config, "hidden_act", "") != "gelu_pytorch_tanh":
        return f"vision activation {vision_config.hidden_act!r} is not the tanh GELU"
    if int(vision_config.hidden_size) % int(vision_config.num_attention_heads):
        return "hidden size is not a multiple of the number of heads"
    return None


def _i64(g: Graph, hint: str, values: list[int]) -> str:
    return g.const(hint, np.array(values, np.int64))


def _linear(g: Graph, x: str, weights: Mapping[str, np.ndarray], prefix: str, hint: str, bias: bool = True) -> str:
    """x @ W^T (+ b), as torch's Linear."""
    out = g.op("MatMul", [x, g.const(f"{hint}.weight", np.ascontiguousarray(weights[f"{prefix}.weight"].T))], hint)
    return g.op("Add", [out, g.const(f"{hint}.bias", weights[f"{prefix}.bias"])], hint) if bias else out


def _layer_norm(g: Graph, x: str, weights: Mapping[str, np.ndarray], prefix: str, eps: float, hint: str) -> str:
    return g.op("LayerNormalization", [x, g.const(f"{hint}.weight", weights[f"{prefix}.weight"]),
                                       g.const(f"{hint}.bias", weights[f"{prefix}.bias"])], hint,
                axis=-1, epsilon=eps)


def position_boundaries(side: int) -> np.ndarray:
    """The bucket edges k/side, k = 1..side-1, in float32 (Idefics3VisionEmbeddings' boundaries).

    The reference makes them with torch.arange(1/side, 1, 1/side), whose float32 values depend
    on the CPU's vector width and sometimes add an edge a hair below 1, which no clamped
    coordinate (at most 1 - 1e-6) reaches. Rounded once here, the same everywhere; exact, and so
    equal to the reference's, when side is a power of two (32 for SmolVLM-256M/500M)."""
    return (np.arange(1, side, dtype=np.float64) / side).astype(np.float32)


def build_vision(vision: Any, scale_factor: int, weights: Mapping[str, np.ndarray], path: Path,
                 opset: int = 17) -> None:
    """Write vision_encoder.onnx at `path` from the checkpoint's weights.

    `vision` is the vision config (transformers' or export.config's)."""
    from onnx import TensorProto, helper

    reason = unsupported_reason(vision)
    if reason:
        raise ValueError(reason)
    g = Graph()
    pixels, mask = _real_images(g)
    hidden, keep = _embeddings(g, vision, weights, pixels, mask)
    heads, eps = int(vision.num_attention_heads), float(vision.layer_norm_eps)
    for i in range(int(vision.num_hidden_layers)):
        hint, w = f"encoder.layers.{i}", f"{VISION_PREFIX}encoder.layers.{i}."
        normed = _layer_norm(g, hidden, weights, f"{w}layer_norm1", eps, f"{hint}.layer_norm1")
        q, k, v = (_linear(g, normed, weights, f"{w}self_attn.{p}_proj", f"{hint}.{p}_proj", bias=False)
                   for p in "qkv")
        bias = np.concatenate([weights[f"{w}self_attn.{p}_proj.bias"] for p in "qkv"])
        context = g.op("MultiHeadAttention", [q, k, v, g.const(f"{hint}.qkv_bias", bias), keep], f"{hint}/attention",
                       domain=MS_DOMAIN, num_heads=heads)
        hidden = g.op("Add", [hidden, _linear(g, context, weights, f"{w}self_attn.out_proj", f"{hint}.out_proj")],
                      f"{hint}/residual1")
        normed = _layer_norm(g, hidden, weights, f"{w}layer_norm2", eps, f"{hint}.layer_norm2")
        fc1 = _linear(g, normed, weights, f"{w}mlp.fc1", f"{hint}.fc1", bias=False)
        act = g.op("FastGelu", [fc1, g.const(f"{hint}.fc1.bias", weights[f"{w}mlp.fc1.bias"])], f"{hint}/gelu",
                   domain=MS_DOMAIN)
        hidden = g.op("Add", [hidden, _linear(g, act, weights, f"{w}mlp.fc2", f"{hint}.fc2")], f"{hint}/residual2")
    hidden = _layer_norm(g, hidden, weights, f"{VISION_PREFIX}post_layernorm", eps, "post_layernorm")
    shuffled = _pixel_shuffle(g, hidden, int(scale_factor), int(vision.hidden_size))
    projection = weights[PROJECTION]
    g.op("MatMul", [shuffled, g.const("connector.proj", np.ascontiguousarray(projection.T))], "connector",
         outputs=["image_features"])

    inputs = [
        helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                      ["batch_size", "num_images", int(vision.num_channels), "height", "width"]),
        helper.make_tensor_value_info("pixel_attention_mask", TensorProto.BOOL,
                                      ["batch_size", "num_images", "height", "width"]),
    ]
    outputs = [helper.make_tensor_value_info("image_features", TensorProto.FLOAT,
                                             ["num_real_images", "image_seq_len", int(projection.shape[0])])]
    model = g.model("smolvlm_vision", inputs, outputs, {"": opset, MS_DOMAIN: 1})
    skip_mask_when_all_real(model)
    save_normalised(model, path)


def _real_images(g: Graph) -> tuple[str, str]:
    """pixel_values and the mask flattened to [images, ...], all-zero padding images dropped;
    when none is real the first stays, as SmolVLM's reference does, so the graph never returns
    an empty tensor."""
    def flat(name: str, hint: str) -> str:
        return g.op("Reshape", [name, g.op("Concat", [_i64(g, f"{hint}/minus1", [-1]),
                                                      g.op("Shape", [name], f"{hint}/shape", start=2)],
                                           f"{hint}/dims", axis=0)], hint)

    pixels, mask = flat("pixel_values", "images"), flat("pixel_attention_mask", "masks")
    zero = g.const("zero_f", np.array(0.0, np.float32))
    nonzero = g.op("Cast", [g.op("Not", [g.op("Equal", [pixels, zero], "real/eq")], "real/ne")], "real/f", to=1)
    real = g.op("Greater", [g.op("ReduceMax", [nonzero], "real/any", axes=[1, 2, 3], keepdims=0), zero], "real")
    any_real = g.op("Greater", [g.op("ReduceMax", [g.op("Cast", [real], "real/f1", to=1)], "real/some",
                                     axes=[0], keepdims=1), zero], "real/any_image")
    count = g.op("Squeeze", [g.op("Shape", [pixels], "real/n", start=0, end=1), _i64(g, "axis0", [0])], "real/n0")
    index = g.op("Range", [g.const("zero_i", np.array(0, np.int64)), count, g.const("one_i", np.array(1, np.int64))],
                 "real/index")
    first = g.op("Equal", [index, g.const("zero_i2", np.array(0, np.int64))], "real/first")
    keep = g.op("Or", [real, g.op("And", [first, g.op("Not", [any_real], "real/none")], "real/fallback")],
                "real/keep")
    return (g.op("Compress", [pixels, keep], "real/pixels", axis=0),
            g.op("Compress", [mask, keep], "real/mask", axis=0))


def _embeddings(g: Graph, vision: Any, weights: Mapping[str, np.ndarray], pixels: str, mask: str) -> tuple[str, str]:
    """Patch embedding + bucketed position embedding; returns (hidden [images, patches, dim],
    keep [images, patches] int32: 1 for a real patch)."""
    p = int(vision.patch_size)
    side = int(vision.image_size) // p
    e = f"{VISION_PREFIX}embeddings."
    # A patch is real when any of its pixels is (the reference's unfold + sum > 0).
    mask_f = g.op("Unsqueeze", [g.op("Cast", [mask], "patch_mask/f", to=1), _i64(g, "axis1", [1])], "patch_mask/4d")
    pooled = g.op("MaxPool", [mask_f], "patch_mask/pool", kernel_shape=[p, p], strides=[p, p])
    patch_f = g.op("Squeeze", [pooled, _i64(g, "axis1b", [1])], "patch_mask/3d")  # [n, h, w] 0/1
    conv = g.op("Conv", [pixels, g.const("patch_embedding.weight", weights[f"{e}patch_embedding.weight"]),
                         g.const("patch_embedding.bias", weights[f"{e}patch_embedding.bias"])],
                "patch_embedding", kernel_shape=[p, p], strides=[p, p])
    grid = g.op("Shape", [conv], "grid", start=2)  # [h, w]
    embeds = g.op("Transpose", [g.op("Reshape", [conv, _i64(g, "flat_patches", [0, 0, -1])], "patches")],
                  "patches/t", perm=[0, 2, 1])

    def buckets(axis: int, hint: str) -> str:
        """Idefics3VisionEmbeddings' fractional coordinate buckets along one axis, per image:
        coordinate i/count (count = real patches along that axis, clamped below 1), bucket =
        how many edges are <= it (torch.bucketize with right=True)."""
        line = g.op("Slice", [patch_f, _i64(g, f"{hint}/0", [0]), _i64(g, f"{hint}/1", [1]),
                              _i64(g, f"{hint}/axis", [3 - axis])], f"{hint}/line")
        count = g.op("ReduceSum", [line, _i64(g, f"{hint}/axes", [1, 2])], f"{hint}/count", keepdims=0)
        length = g.op("Squeeze", [g.op("Slice", [grid, _i64(g, f"{hint}/a", [axis - 1]), _i64(g, f"{hint}/b", [axis])],
                                       f"{hint}/len"), _i64(g, f"{hint}/sq", [0])], f"{hint}/len0")
        index = g.op("Cast", [g.op("Range", [g.const(f"{hint}/zero", np.array(0, np.int64)), length,
                                             g.const(f"{hint}/one", np.array(1, np.int64))], f"{hint}/range")],
                     f"{hint}/index", to=1)
        inverse = g.op("Reciprocal", [count], f"{hint}/inverse")
        frac = g.op("Mul", [g.op("Unsqueeze", [index, _i64(g, f"{hint}/u0", [0])], f"{hint}/row"),
                            g.op("Unsqueeze", [inverse, _i64(g, f"{hint}/u1", [1])], f"{hint}/col")], f"{hint}/frac")
        frac = g.op("Min", [frac, g.const(f"{hint}/max", np.array(1.0 - 1e-6, np.float32))], f"{hint}/clamped")
        above = g.op("GreaterOrEqual", [g.op("Unsqueeze", [frac, _i64(g, f"{hint}/u2", [2])], f"{hint}/frac3"),
                                        g.const(f"{hint}/edges", position_boundaries(side))], f"{hint}/above")
        return g.op("ReduceSum", [g.op("Cast", [above], f"{hint}/above_i", to=7), _i64(g, f"{hint}/last", [2])],
                    f"{hint}/bucket", keepdims=0)  # [n, length]

    rows, cols = buckets(1, "pos_h"), buckets(2, "pos_w")
    pos = g.op("Add", [g.op("Mul", [g.op("Unsqueeze", [rows, _i64(g, "pos/u2", [2])], "pos/rows"),
                                    g.const("pos/side", np.array(side, np.int64))], "pos/scaled"),
                       g.op("Unsqueeze", [cols, _i64(g, "pos/u1", [1])], "pos/cols")], "pos/grid")
    flat_shape = _i64(g, "flat2", [0, -1])
    real = g.op("Cast", [g.op("Reshape", [patch_f, flat_shape], "keep/flat")], "keep/bool", to=9)
    pos = g.op("Where", [real, g.op("Reshape", [pos, flat_shape], "pos/flat"),
                         g.const("pos/zero", np.array(0, np.int64))], "position_ids")
    table = g.const("position_embedding.weight", weights[f"{e}position_embedding.weight"])
    hidden = g.op("Add", [embeds, g.op("Gather", [table, pos], "position_embedding")], "embeddings")
    return hidden, g.op("Cast", [real], "keep", to=6)


def _pixel_shuffle(g: Graph, x: str, s: int, dim: int) -> str:
    """Idefics3Connector.pixel_shuffle, with the patch grid taken from the image (identical for
    square tiles, all the processor makes): [n, h*w, dim] -> [n, (h/s)*(w/s), dim*s*s]."""
    shape = g.op("Shape", [x], "shuffle/shape", start=1, end=2)
    h = g.op("Cast", [g.op("Sqrt", [g.op("Cast", [shape], "shuffle/f", to=1)], "shuffle/side")], "shuffle/h", to=7)
    scale = _i64(g, "shuffle/scale", [s])
    h_s = g.op("Div", [h, scale], "shuffle/h_s")
    dims = lambda *parts: g.op("Concat", list(parts), "shuffle/dims", axis=0)  # noqa: E731
    x = g.op("Reshape", [x, dims(_i64(g, "shuffle/m1", [-1]), h, h_s, _i64(g, "shuffle/d1", [dim * s]))], "shuffle/r1")
    x = g.op("Transpose", [x], "shuffle/t1", perm=[0, 2, 1, 3])
    x = g.op("Reshape", [x, dims(_i64(g, "shuffle/m2", [-1]), h_s, h_s, _i64(g, "shuffle/d2", [dim * s * s]))],
             "shuffle/r2")
    x = g.op("Transpose", [x], "shuffle/t2", perm=[0, 2, 1, 3])
    return g.op("Reshape", [x, dims(_i64(g, "shuffle/m3", [-1]), g.op("Mul", [h_s, h_s], "shuffle/n"),
                                    _i64(g, "shuffle/d3", [dim * s * s]))], "shuffle/out")


def build_embed(weights: Mapping[str, np.ndarray], path: Path, opset: int = 17) -> None:
    """Write embed_tokens.onnx: input_ids -> inputs_embeds, one Gather."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.ascontiguousarray(weights[EMBEDDING])
    node = helper.make_node("Gather", ["embed.weight", "input_ids"], ["inputs_embeds"], name="/embed/Gather")
    graph = helper.make_graph(
        [node], "main_graph",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                       ["batch_size", "sequence_length", int(table.shape[1])])],
        initializer=[numpy_helper.from_array(table, "embed.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    save_normalised(model, path)


def skip_mask_when_all_real(model: Any) -> int:
    """Rewrite the exported graph so that attention runs without the padding mask when every
    patch is real (which is every tile the app's processor makes): each MultiHeadAttention
    becomes an If on "all patches real", without the mask in one branch and with it in the
    other. ONNX Runtime's kernel takes a faster path with no mask: 18.3 vs 21.5 ms per layer on
    a 512-px tile, about 40 ms a tile for the 256M model; a padded image still gets the mask.
    Rewrites the ModelProto `model` in place; returns how many attention nodes it rewrote."""
    from onnx import TensorProto, helper

    graph = model.graph
    attention = [n for n in graph.node if n.op_type == "MultiHeadAttention" and len(n.input) > 4]
    if not attention:
        return 0
    keep = attention[0].input[4]  # the same [images, patches] int32 mask feeds every layer
    lowest = helper.make_node("ReduceMin", [keep], ["all_real/min"], name="all_real/min", keepdims=0)
    one = helper.make_tensor("all_real/one", TensorProto.INT32, [], [1])
    graph.initializer.append(one)
    condition = helper.make_node("Equal", ["all_real/min", "all_real/one"], ["all_real"], name="all_real")
    rewrite = {id(node) for node in attention}
    nodes = [_branching(n, "all_real") if id(n) in rewrite else n for n in graph.node]
    first = next(i for i, n in enumerate(nodes) if n.op_type == "If")  # `keep` exists by then
    nodes[first:first] = [lowest, condition]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(attention)


def _branching(node: Any, condition: str) -> Any:
    """If(condition) { node without its mask } else { node as it was }."""
    from onnx import TensorProto, helper

    attrs = list(node.attribute)
    (output,) = node.output

    def branch(tag: str, inputs: list[str]) -> Any:
        inner = helper.make_node(node.op_type, inputs, [f"{output}/{tag}"], name=f"{node.name}/{tag}",
                                 domain=node.domain)
        inner.attribute.extend(attrs)
        return helper.make_graph([inner], f"{node.name}/{tag}", [],
                                 [helper.make_tensor_value_info(f"{output}/{tag}", TensorProto.FLOAT, None)])

    return helper.make_node("If", [condition], [output], name=f"{node.name}/if_all_real",
                            then_branch=branch("unmasked", list(node.input[:4])),
                            else_branch=branch("masked", list(node.input)))
