"""The decoder graph written op by op instead of traced, for speed at one token per step.

Why: tracing transformers' Llama gives ~100 ONNX nodes per layer (~2,970 per step for the
30-layer SmolVLM-256M), most of them shape arithmetic (Shape, Gather, Unsqueeze, Concat)
recomputed at every step. Decoding one token is dominated by that per-node overhead, not by
the matrix products. Written by hand, a layer is 14 nodes: RMSNorm fused with the residual
add (SkipSimplifiedLayerNormalization), one MatMul for q/k/v and one for gate/up, ONNX
Runtime's RotaryEmbedding, and its GroupQueryAttention, which appends to the KV cache and
attends without ever repeating the shared keys and values. (It replaced 14 nodes of
reshapes, transposes, Concat and MatMul per layer: 2% faster to decode and to prefill on the
256M, measured in A/B runs, and half the nodes.)

Same inputs, outputs, names and shapes as the traced graph and the official release (see
SMOLVLM_FORMAT.md), plus one optional input, `logits_to_keep` (see `_keep_last`);
`export.verify_decoder` checks it against the unmodified transformers model, left padding
and the KV cache included. The com.microsoft ops it uses are in every
ONNX Runtime the app supports; on an execution provider without them, ONNX Runtime runs
those nodes on the CPU.

Two text models are written this way: Llama (SmolVLM's; no biases) and Qwen2 (FastVLM's:
the same layer with biases on q, k and v, one Add after the q/k/v MatMul), both with the
default RoPE and a head size that is a multiple of 8; anything else keeps the traced export
(`unsupported_reason` says why).
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ..engine.generate import LOGITS_TO_KEEP
from .graph import MS_DOMAIN, Graph
from .layout import save_normalised



def unsupported_reason(text_config: Any) -> str | None:
    """None when the text model can be written by hand; otherwise what stands in the way."""
    model_type = getattr(text_config, "model_type", "llama")
    if model_type not in ("llama", "qwen2"):
        return f"text model type {model_type!r} is not llama or qwen2"
    # Qwen2's q/k/v biases are part of the model (always there, no config flag); Llama's
    # attention_bias would put one on o_proj as well, which is not written here.
    if getattr(text_config, "attention_bias", False) or getattr(text_config, "mlp_bias", False):
        return "the text model has attention or MLP biases"
    if model_type == "qwen2" and (getattr(text_config, "use_sliding_window", False)
                                  or "sliding_attention" in (getattr(text_config, "layer_types", None) or ())):
        return "the text model uses sliding-window attention"
    if getattr(text_config, "hidden_act", "silu") != "silu":
        return f"activation {text_config.hidden_act!r} is not silu"
    heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
    if head_dim % 8:
        return f"head size {head_dim} is not a multiple of 8 (ONNX Runtime's GroupQueryAttention needs one)"
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"RoPE type {rope.get('rope_type')!r} is not the default"
    return None


TEXT_PREFIX = "model.text_model."


def _matrix(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """A Linear layer's [out, in] weight as the [in, out] matrix MatMul takes."""
    return np.ascontiguousarray(weights[name].T)


def lm_head_name(weights: Mapping[str, np.ndarray], tied: bool) -> str:
    """The LM head's tensor: lm_head.weight when the config unties it and the checkpoint has it;
    otherwise the token embedding. (An untied config without the tensor is one saved by
    transformers 4, whose default tied the head and so was left out of config.json; transformers
    5 reads its absence as untied and would start from a random head.)"""
    return "lm_head.weight" if not tied and "lm_head.weight" in weights else f"{TEXT_PREFIX}embed_tokens.weight"


def rope_tables(text_config: Any, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin per position for the first half of a head.

    As transformers' default rotary embedding, in float32: inv_freq = 1 / theta^(2i / head_dim),
    angle = position * inv_freq. The power, cosine and sine are taken in float64 and rounded
    once: the same tables on every CPU without torch (torch's float32 power is nearly correctly
    rounded, so inv_freq comes out as transformers' on SmolVLM's configs; its float32 cos and
    sin are off by an ulp here and there, as numpy's are, differently per vector path)."""
    rope = getattr(text_config, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(text_config, "rope_theta", 10000.0)))
    positions = int(text_config.max_position_embeddings)
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / (theta ** exponent.astype(np.float64)).astype(np.float32)
    freqs = np.arange(positions, dtype=np.int64).astype(np.float32)[:, None] * inv_freq[None, :]
    angles = freqs.astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build_decoder(text: Any, weights: Mapping[str, np.ndarray], path: Path, opset: int = 17,
                  tied: bool = True) -> None:
    """Write the text model + LM head as decoder_model_merged.onnx at `path`.

    `text` is the text config (transformers' or export.config's), `weights` the checkpoint's
    float32 tensors by name (export.weights), `tied` whether the LM head is the embedding."""
    reason = unsupported_reason(text)
    if reason:
        raise ValueError(reason)
    heads, kv_heads = int(text.num_attention_heads), int(text.num_key_value_heads)
    hidden = int(text.hidden_size)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    eps = float(text.rms_norm_eps)
    g = Graph()

    mask = _prelude(g)
    cos, sin = rope_tables(text, head_dim)
    cos_name, sin_name = g.const("rope_cos", cos), g.const("rope_sin", sin)
    split_qkv = g.const("split_qkv", np.array([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], np.int64))
    inter = int(text.intermediate_size)
    split_mlp = g.const("split_mlp", np.array([inter, inter], np.int64))

    residual, pending = "inputs_embeds", None  # pending: the last block's output, not yet added
    for i in range(int(text.num_hidden_layers)):
        hint, w = f"layers.{i}", f"{TEXT_PREFIX}layers.{i}."
        normed, residual = _norm(g, pending, residual, weights[f"{w}input_layernorm.weight"], eps,
                                 f"{hint}/input_norm")
        qkv_w = np.concatenate([_matrix(weights, f"{w}self_attn.{p}_proj.weight") for p in "qkv"], axis=1)
        qkv = g.op("MatMul", [normed, g.const(f"{hint}.qkv", qkv_w)], f"{hint}/qkv")
        if getattr(text, "model_type", "llama") == "qwen2":  # its q/k/v biases (a missing one: KeyError)
            qkv_b = np.concatenate([weights[f"{w}self_attn.{p}_proj.bias"] for p in "qkv"])
            qkv = g.op("Add", [qkv, g.const(f"{hint}.qkv_bias", qkv_b)], f"{hint}/qkv_bias")
        q, k, v = g.op("Split", [qkv, split_qkv], f"{hint}/qkv", outputs=3, axis=-1)
        q = g.op("RotaryEmbedding", [q, "position_ids", cos_name, sin_name], f"{hint}/rope_q",
                 domain=MS_DOMAIN, num_heads=heads, interleaved=0)
        k = g.op("RotaryEmbedding", [k, "position_ids", cos_name, sin_name], f"{hint}/rope_k",
                 domain=MS_DOMAIN, num_heads=kv_heads, interleaved=0)
        # Inputs left empty: cos/sin caches and position_ids (rotary is done above, so that
        # any position_ids work, also a left-padded prompt's).
        context, _, _ = g.op(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
             mask.seqlens_k, mask.total, "", "", "", mask.bias],
            f"{hint}/attention", outputs=[g.name(f"{hint}/context"), f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=head_dim**-0.5)
        o_proj = _matrix(weights, f"{w}self_attn.o_proj.weight")
        attn_out = g.op("MatMul", [context, g.const(f"{hint}.o_proj", o_proj)], f"{hint}/o_proj")
        normed, residual = _norm(g, attn_out, residual, weights[f"{w}post_attention_layernorm.weight"], eps,
                                 f"{hint}/post_norm")
        pending = _mlp(g, normed, weights, f"{w}mlp.", split_mlp, hint)

    normed, _ = _norm(g, pending, residual, weights[f"{TEXT_PREFIX}norm.weight"], eps, "final_norm")
    normed = _keep_last(g, normed)
    head = _matrix(weights, lm_head_name(weights, tied))
    g.op("MatMul", [normed, g.const("lm_head", head)], "lm_head", outputs=["logits"])

    model = g.model("smolvlm_decoder", _inputs(text, head_dim) + [_logits_to_keep_input()], _outputs(text, head_dim),
                    {"": opset, MS_DOMAIN: 1})
    save_normalised(model, path)


class _Mask(NamedTuple):
    """What every layer's GroupQueryAttention takes about the step's keys, computed once."""

    bias: str       # [batch, 1, seq, total] float: 0 where a key may be seen, float32 min where not
    seqlens_k: str  # [batch] int32: total - 1 for every row (the cache is one left-padded block)
    total: str      # int32 scalar: keys after this step


def _prelude(g: Graph) -> _Mask:
    """The step's attention mask, once per step.

    A query at absolute position total - seq + s sees the keys at positions <= its own that
    are not padding (attention_mask 0), as transformers' causal mask does. The whole mask
    goes in as an additive bias: GroupQueryAttention reads its cache as right-padded
    (`seqlens_k`), while the engine's batches are left-padded, so every row is declared
    full-length and the padding is masked here instead."""
    one = g.const("one", np.array([1], np.int64))
    zero = g.const("zero", np.array([0], np.int64))
    seq = g.op("Shape", ["inputs_embeds"], "mask/seq", start=1, end=2)
    batch = g.op("Shape", ["attention_mask"], "mask/batch", start=0, end=1)
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
    bias = g.op("Where", [allowed, g.const("open", np.array(0.0, np.float32)), blocked], "mask/additive")
    last = g.op("Cast", [g.op("Sub", [total, one], "mask/last")], "mask/last32", to=6)  # int32
    seqlens_k = g.op("Expand", [last, batch], "mask/seqlens_k")
    total32 = g.op("Cast", [scalar(total, "mask/total2")], "mask/total32", to=6)
    return _Mask(bias, seqlens_k, total32)


def _norm(g: Graph, pending: str | None, residual: str, norm_weight: np.ndarray, eps: float,
          hint: str) -> tuple[str, str]:
    """RMSNorm of residual + pending; returns (normed, new residual)."""
    weight = g.const(f"{hint}.weight", norm_weight)
    if pending is None:
        return g.op("SimplifiedLayerNormalization", [residual, weight], hint, axis=-1, epsilon=eps), residual
    normed, _, _, summed = g.op("SkipSimplifiedLayerNormalization", [pending, residual, weight], hint,
                                outputs=4, domain=MS_DOMAIN, epsilon=eps)
    return normed, summed


def _logits_to_keep_input() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [])


def _keep_last(g: Graph, hidden: str) -> str:
    """The LM head's input cut to the last `logits_to_keep` positions (0, the default: all).

    Why: a prefill needs only the last position's logits, and the LM head over all of a
    79-token prompt took 15 of its 83 ms (256M int8). An extra input with a default (an
    initializer of the same name, which ONNX Runtime lets a caller override), as transformers'
    forward has it; a caller that does not know it gets every position, as the official
    graphs give."""
    from onnx import numpy_helper

    g.initializers.append(numpy_helper.from_array(np.array(0, np.int64), LOGITS_TO_KEEP))
    start = g.op("Neg", [g.op("Unsqueeze", [LOGITS_TO_KEEP, g.const("axis0", np.array([0], np.int64))],
                               "keep/1d")], "keep/start")
    end = g.const("keep_end", np.array([np.iinfo(np.int64).max], np.int64))
    return g.op("Slice", [hidden, start, end, g.const("keep_axis", np.array([1], np.int64))], "keep/slice")


def _mlp(g: Graph, x: str, weights: Mapping[str, np.ndarray], prefix: str, split: str, hint: str) -> str:
    """down(silu(gate(x)) * up(x)) with gate and up in one MatMul."""
    gate_up = np.concatenate([_matrix(weights, f"{prefix}gate_proj.weight"),
                              _matrix(weights, f"{prefix}up_proj.weight")], axis=1)
    both = g.op("MatMul", [x, g.const(f"{hint}.gate_up", gate_up)], f"{hint}/gate_up")
    gate, up = g.op("Split", [both, split], f"{hint}/gate_up", outputs=2, axis=-1)
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{hint}/sigmoid")], f"{hint}/silu")
    product = g.op("Mul", [act, up], f"{hint}/gated")
    down = _matrix(weights, f"{prefix}down_proj.weight")
    return g.op("MatMul", [product, g.const(f"{hint}.down", down)], f"{hint}/down")


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
