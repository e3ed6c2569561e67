"""The FastVLM exporter's language model (export/fastvlm.py + export/decoder.py's Qwen2 path)
against transformers' Qwen2, and its int8 files.

Qwen2ForCausalLM loads with the project's own torch (no timm needed: that is only FastVLM's
vision tower, tested in tests/test_fastvlm_reference.py), so the decoder written op by op
from numpy weights is checked here against it: logits and KV cache after a prompt and a step,
tied and untied LM heads, in both checkpoint layouts (transformers' FastVlmForConditionalGeneration
names and Apple's llava_qwen2 ones).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from smolvlm_desktop.export import decoder
from smolvlm_desktop.export.fastvlm import (FastVlmCheckpoint, TextWeights, build_text_graphs,
                                            quantize_embedding_rows, read_fastvlm_config, text_prefix)
from smolvlm_desktop.export.layout import ExportError

TINY = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-fastvlm"


def qwen2(tied: bool, seed: int = 5):
    """A random Qwen2ForCausalLM, 2 layers of 64 (heads of 16, 2 key/value heads), biases
    and norms drawn too (the init's zeros and ones would hide a missing bias or norm)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                      tie_word_embeddings=tied, rms_norm_eps=1e-6)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.3 if p.dim() == 1 else p.shape[-1] ** -0.5)
    return model


def checkpoint_config(model) -> FastVlmCheckpoint:
    text = model.config
    return FastVlmCheckpoint("fast_vlm", SimpleNamespace(
        model_type="qwen2", vocab_size=text.vocab_size, hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size, num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads, num_key_value_heads=text.num_key_value_heads,
        head_dim=None, hidden_act="silu", max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps, rope_theta=1000000.0, rope_parameters=None, rope_scaling=None,
        use_sliding_window=False, layer_types=None), bool(text.tie_word_embeddings), 1024)


def numpy_weights(model, prefix: str) -> dict[str, np.ndarray]:
    """The model's tensors as a checkpoint would name them: `prefix` for the language model
    ("model." is Qwen2's and Apple's llava_qwen2 own, "model.language_model." transformers'
    FastVLM's); a tied head is not stored, as save_pretrained leaves it out."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if not model.config.tie_word_embeddings:
                out[name] = tensor.numpy().copy()
        else:
            out[prefix + name[len("model."):]] = tensor.numpy().copy()
    return out


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.reference
@pytest.mark.parametrize("tied", [True, False], ids=["tied head", "untied head"])
@pytest.mark.parametrize("prefix", ["model.language_model.", "model."], ids=["fast_vlm names", "llava_qwen2 names"])
def test_the_qwen2_decoder_written_op_by_op_matches_transformers(tmp_path: Path, tied: bool, prefix: str) -> None:
    from smolvlm_desktop.export import verify_decoder, verify_embed

    model = qwen2(tied)
    weights = numpy_weights(model, prefix)
    assert text_prefix(weights) == prefix
    build_text_graphs(checkpoint_config(model), weights, tmp_path)
    assert verify_decoder(model, session(tmp_path / "decoder_model_merged.onnx")) < 1e-4  # prompt, then a step
    assert verify_embed(model, session(tmp_path / "embed_tokens.onnx")) == 0.0


@pytest.mark.reference
def test_the_qwen2_biases_are_in_the_graph(tmp_path: Path) -> None:
    """A decoder built with zero q/k/v biases differs (the check above can tell), and one
    whose checkpoint lacks a bias is refused rather than built without it."""
    import onnx

    model = qwen2(tied=True)
    weights = numpy_weights(model, "model.")
    build_text_graphs(checkpoint_config(model), weights, tmp_path)
    graph = onnx.load(str(tmp_path / "decoder_model_merged.onnx")).graph
    assert sum(n.op_type == "Add" and "qkv_bias" in n.name for n in graph.node) == 2  # one per layer
    assert sum(n.op_type == "GroupQueryAttention" for n in graph.node) == 2
    zeroed = {k: (np.zeros_like(v) if k.endswith("_proj.bias") else v) for k, v in weights.items()}
    (tmp_path / "zeroed").mkdir()
    build_text_graphs(checkpoint_config(model), zeroed, tmp_path / "zeroed")
    from smolvlm_desktop.export import verify_decoder

    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_decoder(model, session(tmp_path / "zeroed" / "decoder_model_merged.onnx"))
    missing = {k: v for k, v in weights.items() if not k.endswith("k_proj.bias")}
    with pytest.raises(ExportError, match="has no tensor model.layers.0.self_attn.k_proj.bias"):
        build_text_graphs(checkpoint_config(model), missing, tmp_path / "zeroed")


def test_text_weights_show_the_checkpoint_under_the_decoders_names() -> None:
    raw = {"model.language_model.embed_tokens.weight": np.zeros((3, 2)), "lm_head.weight": np.ones((3, 2)),
           "model.vision_tower.x": np.zeros(1)}
    view = TextWeights(raw, text_prefix(raw))
    assert f"{decoder.TEXT_PREFIX}embed_tokens.weight" in view and "lm_head.weight" in view
    assert sorted(view) == ["lm_head.weight", f"{decoder.TEXT_PREFIX}embed_tokens.weight"]
    assert view["lm_head.weight"] is raw["lm_head.weight"]  # no copy
    with pytest.raises(ExportError, match="not a FastVLM checkpoint"):
        text_prefix({"model.text_model.embed_tokens.weight": np.zeros(1)})


def test_qwen2_with_sliding_window_attention_is_refused_and_llama_stays_as_it_was() -> None:
    base = dict(model_type="qwen2", num_attention_heads=4, hidden_size=64)
    assert decoder.unsupported_reason(SimpleNamespace(**base)) is None
    assert "sliding-window" in decoder.unsupported_reason(SimpleNamespace(**base, use_sliding_window=True))
    assert "sliding-window" in decoder.unsupported_reason(
        SimpleNamespace(**base, layer_types=["full_attention", "sliding_attention"]))
    assert "biases" in decoder.unsupported_reason(SimpleNamespace(**dict(base, model_type="llama"), attention_bias=True))
    assert "is not llama or qwen2" in decoder.unsupported_reason(SimpleNamespace(**dict(base, model_type="gemma")))


def test_both_config_forms_read_the_same_qwen2_settings(tmp_path: Path) -> None:
    flat = json.loads((TINY / "config.json").read_text())
    nested = json.loads((TINY / "transformers_config.json").read_text())
    for name, data in (("flat", flat), ("nested", nested)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(data))
        (tmp_path / name / "preprocessor_config.json").write_bytes((TINY / "preprocessor_config.json").read_bytes())
    a, b = read_fastvlm_config(tmp_path / "flat"), read_fastvlm_config(tmp_path / "nested")
    assert (a.model_type, b.model_type) == ("llava_qwen2", "fast_vlm")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert getattr(a.text, key) == getattr(b.text, key), key
    assert a.text.model_type == b.text.model_type == "qwen2"
    assert float(a.text.rope_theta) == 1e6 and b.text.rope_parameters["rope_theta"] == 1e6
    assert a.crop == b.crop == 256 and a.tie_word_embeddings is b.tie_word_embeddings is True  # as FastVLM-0.5B
    assert decoder.unsupported_reason(a.text) is None and decoder.unsupported_reason(b.text) is None


def test_embedding_rows_in_int8_each_with_its_own_scale(tmp_path: Path) -> None:
    """Every row comes back within half a step of its own scale, however small its values
    beside the table's largest row (one scale for the table would flatten it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    table[2] *= 1e-3
    table[4] = 0.0
    graph = helper.make_graph([helper.make_node("Gather", ["embed.weight", "input_ids"], ["inputs_embeds"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["b", "s", 8])],
                              initializer=[numpy_helper.from_array(table, "embed.weight")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "e.onnx"))
    quantize_embedding_rows(tmp_path / "e.onnx", tmp_path / "e_int8.onnx")
    (got,) = session(tmp_path / "e_int8.onnx").run(None, {"input_ids": np.array([[0, 1, 2, 3, 4, 5]])})
    step = np.abs(table).max(axis=1) / 127
    assert np.all(np.abs(got[0] - table) <= step[:, None] / 2 + 1e-12)
    assert np.all(got[0][4] == 0.0)


# --- the committed tiny FastVLM: the project's graphs ------------------------------------------

def test_the_tiny_fastvlm_has_the_projects_graphs() -> None:
    """The exporter's decoder (GroupQueryAttention, logits_to_keep, 8-bit blocks in int8), the
    vision tower's 1x1 convolutions as MatMuls (8-bit blocks in int8), the embedding in int8 rows."""
    import onnx

    ops = {name: [n.op_type for n in onnx.load(str(TINY / "onnx" / f"{name}.onnx")).graph.node]
           for name in ("decoder_model_merged", "decoder_model_merged_int8", "vision_encoder",
                        "vision_encoder_int8", "embed_tokens_int8")}
    assert ops["decoder_model_merged"].count("GroupQueryAttention") == 2
    assert "MatMulNBits" in ops["decoder_model_merged_int8"] and "MatMul" not in ops["decoder_model_merged_int8"]
    graph = onnx.load(str(TINY / "onnx" / "decoder_model_merged.onnx")).graph
    assert "logits_to_keep" in [i.name for i in graph.input]  # optional: an initializer gives its default
    assert "logits_to_keep" in [t.name for t in graph.initializer]
    vision = onnx.load(str(TINY / "onnx" / "vision_encoder.onnx"))
    kernels = {t.name: list(t.dims) for t in vision.graph.initializer}
    assert not [n for n in vision.graph.node if n.op_type == "Conv" and kernels[n.input[1]][2:] == [1, 1]
                and next((a.i for a in n.attribute if a.name == "group"), 1) == 1]
    assert ops["vision_encoder_int8"].count("MatMulNBits") == ops["vision_encoder"].count("MatMul") - 4  # 4 attention products
    assert ops["embed_tokens_int8"] == ["Gather", "Gather", "Cast", "Mul"]


def test_the_engine_decodes_the_tiny_fastvlm_in_place_and_in_batches() -> None:
    from smolvlm_desktop.engine.model import VisionLanguageModel

    for variant in ("fp32", "int8"):
        model = VisionLanguageModel.load(TINY, variant=variant, threads=1)
        try:
            assert type(model.new_decoder_state()).__name__ == "InPlaceDecoderState", variant
            assert model.decodes_in_batches, variant
        finally:
            model.close()


def test_a_fastvlm_checkpoint_to_build_without_torch_is_refused_naming_models_export(tmp_path: Path) -> None:
    from smolvlm_desktop.export.build import build_from_safetensors

    (tmp_path / "config.json").write_text((TINY / "transformers_config.json").read_text())
    with pytest.raises(ExportError, match="models export"):
        build_from_safetensors(tmp_path, tmp_path / "out")


def test_the_text_graphs_build_from_a_safetensors_file_reading_each_tensor_once(tmp_path: Path) -> None:
    """Apple's llava_qwen2 names in a model.safetensors, read lazily with numpy (no torch): the same
    graphs as from the tensors in memory, and no tensor read to learn that it exists."""
    safetensors = pytest.importorskip("safetensors.numpy")
    from smolvlm_desktop.export.weights import SafetensorsWeights, read_safetensors

    model = qwen2(tied=True)
    weights = numpy_weights(model, "model.")
    safetensors.save_file(weights, str(tmp_path / "model.safetensors"))
    lazy = read_safetensors(tmp_path)
    reads: list[str] = []
    original = SafetensorsWeights.__getitem__

    def counting(self, name):  # noqa: ANN001, ANN202 - a spy on the real reader
        reads.append(name)
        return original(self, name)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    SafetensorsWeights.__getitem__ = counting
    try:
        build_text_graphs(checkpoint_config(model), lazy, tmp_path / "a")
    finally:
        SafetensorsWeights.__getitem__ = original
    build_text_graphs(checkpoint_config(model), weights, tmp_path / "b")
    for name in ("embed_tokens.onnx", "decoder_model_merged.onnx"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert reads.count("model.embed_tokens.weight") == 2  # the embedding graph, then the tied head
    assert max(reads.count(name) for name in set(reads) - {"model.embed_tokens.weight"}) == 1
