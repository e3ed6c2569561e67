"""The decoder graph written op by op instead of traced, for speed at one token per step.

Why: tracing transformers' Llama gives ~100 ONNX nodes per layer (~2,970 per step for the
30-layer SmolVLM-256M), most of them shape arithmetic (Shape, Gather, Unsqueeze, Concat)
recomputed at every step. Decoding one token is dominated by that per-node overhead, not by
the matrix products. Written by hand, a layer is ~30 nodes: RMSNorm fused with the residual
add (SkipSimplifiedLayerNormalization), one MatMul for q/k/v and one for gate/up, ONNX
Runtime's RotaryEmbedding, and grouped-query attention done by folding the query heads of a
group into the sequence axis, so the shared keys and values are never repeated in memory.

Same inputs, outputs, names and shapes as the traced graph and the official release (see
SMOLVLM_FORMAT.md); `export.verify_decoder` checks it against the unmodified transformers
model, left padding and the KV cache included. The com.microsoft ops it uses are in every
ONNX Runtime the app supports; on an execution provider without them, ONNX Runtime runs
those nodes on the CPU.

Only the plain Llama text model is written this way (no biases, default RoPE); anything
else keeps the traced export (`unsupported_reason` says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"


def unsupported_reason(text_config: Any) -> str | None:
    """None when the text model can be written by hand; otherwise what stands in the way."""
    if getattr(text_config, "model_type", "llama") != "llama":
        return f"text model type {text_config.model_type!r} is not llama"
    if getattr(text_config, "attention_bias", False) or getattr(text_config, "mlp_bias", False):
        return "the text model has attention or MLP biases"
    if getattr(text_config, "hidden_act", "silu") != "silu":
        return f"activation {text_config.hidden_act!r} is not silu"
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"RoPE type {rope.get('rope_type')!r} is not the default"
    return None


class _Graph:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int | list[str] = 1,
           domain: str = "", **attrs: Any) -> Any:
        """Add a node; return its output name (or names, when there are several)."""
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [self.name(f"{hint}/{op_type}") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(hint), domain=domain, **attrs))
        return names[0] if len(names) == 1 else names


def _weight(linear: Any) -> np.ndarray:
    """A torch Linear's weight as the [in, out] matrix MatMul takes."""
    return linear.weight.detach().float().numpy().T


def rope_tables(text_config: Any, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin per position for the first half of a head, computed with torch exactly as
    transformers' default rotary embedding does (inv_freq times the position, in float32)."""
    import torch

    rope = getattr(text_config, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(text_config, "rope_theta", 10000.0)))
    positions = int(text_config.max_position_embeddings)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.arange(positions, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    return freqs.cos().numpy(), freqs.sin().numpy()


def build_decoder(lm: Any, path: Path, opset: int = 17) -> None:
    """Write `lm`'s text model + LM head as decoder_model_merged.onnx at `path`."""
    from onnx import helper, save

    text = lm.config.get_text_config(decoder=True)
    reason = unsupported_reason(text)
    if reason:
        raise ValueError(reason)
    model = lm.model.text_model
    heads, kv_heads = int(text.num_attention_heads), int(text.num_key_value_heads)
    hidden = int(text.hidden_size)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    group = heads // kv_heads
    eps = float(text.rms_norm_eps)
    g = _Graph()

    mask = _prelude(g, group)
    cos, sin = rope_tables(text, head_dim)
    cos_name, sin_name = g.const("rope_cos", cos), g.const("rope_sin", sin)
    scale = g.const("attn_scale", np.array(head_dim**-0.5, dtype=np.float32))
    shapes = {
        "heads": g.const("shape_heads", np.array([0, 0, heads, head_dim], np.int64)),
        "kv_heads": g.const("shape_kv_heads", np.array([0, 0, kv_heads, head_dim], np.int64)),
        "grouped": g.const("shape_grouped", np.array([0, kv_heads, -1, head_dim], np.int64)),
        "ungrouped": g.const("shape_ungrouped", np.array([0, heads, -1, head_dim], np.int64)),
        "merged": g.const("shape_merged", np.array([0, 0, heads * head_dim], np.int64)),
    }
    split_qkv = g.const("split_qkv", np.array([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], np.int64))
    inter = int(text.intermediate_size)
    split_mlp = g.const("split_mlp", np.array([inter, inter], np.int64))

    residual, pending = "inputs_embeds", None  # pending: the last block's output, not yet added
    for i, layer in enumerate(model.layers):
        hint = f"layers.{i}"
        normed, residual = _norm(g, pending, residual, layer.input_layernorm, eps, f"{hint}/input_norm")
        attn = layer.self_attn
        qkv_w = np.concatenate([_weight(attn.q_proj), _weight(attn.k_proj), _weight(attn.v_proj)], axis=1)
        qkv = g.op("MatMul", [normed, g.const(f"{hint}.qkv", qkv_w)], f"{hint}/qkv")
        q, k, v = g.op("Split", [qkv, split_qkv], f"{hint}/qkv", outputs=3, axis=-1)
        q = g.op("RotaryEmbedding", [q, "position_ids", cos_name, sin_name], f"{hint}/rope_q",
                 domain=MS_DOMAIN, num_heads=heads, interleaved=0)
        k = g.op("RotaryEmbedding", [k, "position_ids", cos_name, sin_name], f"{hint}/rope_k",
                 domain=MS_DOMAIN, num_heads=kv_heads, interleaved=0)
        keys = _cache(g, k, shapes["kv_heads"], f"past_key_values.{i}.key", f"present.{i}.key", hint)
        values = _cache(g, v, shapes["kv_heads"], f"past_key_values.{i}.value", f"present.{i}.value", hint)
        context = _attention(g, q, keys, values, mask, scale, shapes, hint)
        attn_out = g.op("MatMul", [context, g.const(f"{hint}.o_proj", _weight(attn.o_proj))], f"{hint}/o_proj")
        normed, residual = _norm(g, attn_out, residual, layer.post_attention_layernorm, eps, f"{hint}/post_norm")
        pending = _mlp(g, normed, layer.mlp, split_mlp, hint)

    normed, _ = _norm(g, pending, residual, model.norm, eps, "final_norm")
    g.op("MatMul", [normed, g.const("lm_head", _weight(lm.lm_head))], "lm_head", outputs=["logits"])

    graph = helper.make_graph(g.nodes, "smolvlm_decoder", _inputs(text, head_dim), _outputs(text, head_dim),
                              initializer=g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                          helper.make_opsetid(MS_DOMAIN, 1)])
    onnx_model.ir_version = 8
    save(onnx_model, str(path))


def _prelude(g: _Graph, group: int) -> str:
    """The additive attention mask, once per step: [batch, 1, group * seq, total].

    A query at absolute position total - seq + s sees the keys at positions <= its own that
    are not padding (attention_mask 0), as transformers' causal mask does; the block of seq
    rows is tiled `group` times because the query heads of a group are folded into rows."""
    one = g.const("one", np.array([1], np.int64))
    zero = g.const("zero", np.array([0], np.int64))
    seq = g.op("Shape", ["inputs_embeds"], "mask/seq", start=1, end=2)
    total = g.op("Shape", ["attention_mask"], "mask/total", start=1, end=2)
    start = g.op("Sub", [total, seq], "mask/start")
    scalar = lambda x, h: g.op("Squeeze", [x, zero], h)  # noqa: E731 - Range takes scalars
    step = scalar(one, "mask/step")
    q_pos = g.op("Range", [scalar(start, "mask/start0"), scalar(total, "mask/total0"), step], "mask/q_pos")
    k_pos = g.op("Range", [scalar(zero, "mask/zero0"), scalar(total, "mask/total1"), step], "mask/k_pos")
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_pos, zero], "mask/k_row"),
                                  g.op("Unsqueeze", [q_pos, one], "mask/q_col")], "mask/causal")  # [seq, total]
    not_pad = g.op("Cast", ["attention_mask"], "mask/not_pad", to=9)  # bool
    not_pad = g.op("Unsqueeze", [not_pad, g.const("axes_1_2", np.array([1, 2], np.int64))], "mask/not_pad4")
    allowed = g.op("And", [causal, not_pad], "mask/allowed")  # [batch, 1, seq, total]
    blocked = g.const("blocked", np.array(np.finfo(np.float32).min, np.float32))
    mask = g.op("Where", [allowed, g.const("open", np.array(0.0, np.float32)), blocked], "mask/additive")
    if group == 1:
        return mask
    return g.op("Tile", [mask, g.const("mask_repeats", np.array([1, 1, group, 1], np.int64))], "mask/grouped")


def _norm(g: _Graph, pending: str | None, residual: str, norm: Any, eps: float, hint: str) -> tuple[str, str]:
    """RMSNorm of residual + pending; returns (normed, new residual)."""
    weight = g.const(f"{hint}.weight", norm.weight.detach().float().numpy())
    if pending is None:
        return g.op("SimplifiedLayerNormalization", [residual, weight], hint, axis=-1, epsilon=eps), residual
    normed, _, _, summed = g.op("SkipSimplifiedLayerNormalization", [pending, residual, weight], hint,
                                outputs=4, domain=MS_DOMAIN, epsilon=eps)
    return normed, summed


def _cache(g: _Graph, new: str, shape: str, past: str, present: str, hint: str) -> str:
    """[batch, seq, kv_heads*dim] -> [batch, kv_heads, seq, dim], appended to the past."""
    heads_first = g.op("Transpose", [g.op("Reshape", [new, shape], f"{hint}/kv_split")], f"{hint}/kv_t",
                       perm=[0, 2, 1, 3])
    return g.op("Concat", [past, heads_first], f"{hint}/kv_cat", outputs=[present], axis=2)


def _attention(g: _Graph, q: str, keys: str, values: str, mask: str, scale: str,
               shapes: dict[str, str], hint: str) -> str:
    """softmax(q k^T * scale + mask) v with the query heads of each group folded into rows."""
    q = g.op("Transpose", [g.op("Reshape", [q, shapes["heads"]], f"{hint}/q_split")], f"{hint}/q_t", perm=[0, 2, 1, 3])
    q = g.op("Reshape", [q, shapes["grouped"]], f"{hint}/q_group")  # [b, kv, group*seq, d]
    keys_t = g.op("Transpose", [keys], f"{hint}/k_t", perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [q, keys_t], f"{hint}/qk"), scale], f"{hint}/scale")
    probs = g.op("Softmax", [g.op("Add", [scores, mask], f"{hint}/mask")], f"{hint}/softmax", axis=-1)
    context = g.op("MatMul", [probs, values], f"{hint}/pv")
    context = g.op("Reshape", [context, shapes["ungrouped"]], f"{hint}/ctx_ungroup")  # [b, heads, seq, d]
    context = g.op("Transpose", [context], f"{hint}/ctx_t", perm=[0, 2, 1, 3])
    return g.op("Reshape", [context, shapes["merged"]], f"{hint}/ctx_merge")


def _mlp(g: _Graph, x: str, mlp: Any, split: str, hint: str) -> str:
    """down(silu(gate(x)) * up(x)) with gate and up in one MatMul."""
    gate_up = np.concatenate([_weight(mlp.gate_proj), _weight(mlp.up_proj)], axis=1)
    both = g.op("MatMul", [x, g.const(f"{hint}.gate_up", gate_up)], f"{hint}/gate_up")
    gate, up = g.op("Split", [both, split], f"{hint}/gate_up", outputs=2, axis=-1)
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{hint}/sigmoid")], f"{hint}/silu")
    product = g.op("Mul", [act, up], f"{hint}/gated")
    return g.op("MatMul", [product, g.const(f"{hint}.down", _weight(mlp.down_proj))], f"{hint}/down")


def _inputs(text: Any, head_dim: int) -> list[Any]:
    from onnx import TensorProto, helper

    kv, layers = int(text.num_key_value_heads), int(text.num_hidden_layers)
    inputs = [
        helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                      ["batch_size", "sequence_length", int(text.hidden_size)]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch_size", kv, "past_sequence_length", head_dim]))
    return inputs


def _outputs(text: Any, head_dim: int) -> list[Any]:
    from onnx import TensorProto, helper

    kv, layers = int(text.num_key_value_heads), int(text.num_hidden_layers)
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch_size", "sequence_length", int(text.vocab_size)])]
    for i in range(layers):
        for kind in ("key", "value"):
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", TensorProto.FLOAT, ["batch_size", kv, "total_sequence_length", head_dim]))
    return outputs
