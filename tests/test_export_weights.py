"""Reading model.safetensors with numpy, and building the graphs from it.

The reader is checked against the safetensors package and torch (bf16, f16, f32; real files
written by them); the graphs built from the file are checked against the graphs built from the
loaded transformers model, byte for byte. Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smolvlm_desktop.export import ExportError
from smolvlm_desktop.export.config import read_config
from smolvlm_desktop.export.weights import read_safetensors, widen

TINY = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-smolvlm"

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from smolvlm_desktop.export.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


def write_with_torch(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_every_value_widens_exactly_as_torch_does(tmp_path: Path, dtype: str) -> None:
    """All 65,536 bit patterns of a 16-bit float (infinities and subnormals included), or
    random float32s, read back bit-identical to torch's own .float(); NaNs stay NaN (their
    payload bits are the converter's business)."""
    torch = pytest.importorskip("torch")
    if dtype == "float32":
        values = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    else:
        values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(getattr(torch, dtype))
        values = values.reshape(256, 256)
    write_with_torch(tmp_path / "model.safetensors", {"w": values, "other": torch.ones(2)})
    weights = read_safetensors(tmp_path)
    got = weights["w"]
    want = values.float().numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan) and (dtype == "float32" or nan.any())
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert sorted(weights) == ["other", "w"]


def test_bf16_widening_is_a_shift_into_the_high_half() -> None:
    raw = np.array([0x3F80, 0xC000, 0x7F80, 0x0001], np.uint16)  # 1, -2, inf, smallest subnormal
    assert widen(raw, "BF16").tolist() == [1.0, -2.0, np.inf, np.uint32(0x00010000).view(np.float32)]


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    write_with_torch(tmp_path / "model-00001-of-00002.safetensors", {"a": torch.zeros(2)})
    write_with_torch(tmp_path / "model-00002-of-00002.safetensors", {"b": torch.ones(3, dtype=torch.bfloat16)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    weights = read_safetensors(tmp_path)
    assert weights["a"].tolist() == [0, 0] and weights["b"].tolist() == [1, 1, 1]


def test_a_truncated_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    write_with_torch(tmp_path / "model.safetensors", {"w": torch.ones(1000)})
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(ExportError, match="outside the file"):
        read_safetensors(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"<html>not weights</html>")
    with pytest.raises(ExportError, match="not a safetensors file"):
        read_safetensors(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="no model.safetensors"):
        read_safetensors(tmp_path)


def test_config_defaults_are_transformers_defaults(tmp_path: Path) -> None:
    """A config that leaves numbers out (SmolVLM-500M has no num_hidden_layers) reads as
    transformers reads it."""
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "idefics3", "text_config": {"hidden_size": 64, "num_attention_heads": 4},
         "vision_config": {"hidden_size": 32}}))
    ours = read_config(tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    text = theirs.get_text_config(decoder=True)
    for name in ("num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "max_position_embeddings",
                 "intermediate_size", "vocab_size", "hidden_act"):
        assert getattr(ours.text, name) == getattr(text, name), name
    for name in ("num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "intermediate_size",
                 "layer_norm_eps", "hidden_act"):
        assert getattr(ours.vision, name) == getattr(theirs.vision_config, name), name
    assert ours.scale_factor == theirs.scale_factor
    assert ours.tie_word_embeddings == bool(theirs.tie_word_embeddings)


def test_config_of_another_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ExportError, match="'llava' is not one of idefics3, smolvlm"):
        read_config(tmp_path)


def test_graphs_built_from_the_file_are_the_committed_ones(checkpoint: Path, tmp_path: Path) -> None:
    """build_from_safetensors (numpy weights, the path a user's machine runs) writes, byte for
    byte, the fp32 and int8 graphs that export_checkpoint wrote from the loaded transformers
    model and verified against it (the committed tiny model), plus the same side files."""
    from smolvlm_desktop.export.build import build_from_safetensors

    steps: list[tuple[str, int, int]] = []
    build_from_safetensors(checkpoint, tmp_path / "out", quantize=("int8",),
                           on_step=lambda what, done, total: steps.append((what, done, total)))
    built = sorted(p.name for p in (tmp_path / "out" / "onnx").iterdir())
    assert built == sorted(p.name for p in (TINY / "onnx").iterdir())
    for name in built:
        assert (tmp_path / "out" / "onnx" / name).read_bytes() == (TINY / "onnx" / name).read_bytes(), name
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (TINY / "tokenizer.json").read_bytes()
    # 3 fp32 graphs, 3 int8 ones and the int8 prompt decoder
    assert steps[-1] == ("done", 7, 7) and [d for _, d, _ in steps] == list(range(8))


def test_rope_tables_match_transformers_within_an_ulp(checkpoint: Path) -> None:
    torch = pytest.importorskip("torch")
    from smolvlm_desktop.export import load_checkpoint
    from smolvlm_desktop.export.decoder import rope_tables

    lm = load_checkpoint(checkpoint)
    text = read_config(checkpoint).text
    rotary = lm.model.text_model.rotary_emb
    positions = torch.arange(int(text.max_position_embeddings))[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
    half = int(text.head_dim) // 2
    ours_cos, ours_sin = rope_tables(text, int(text.head_dim))
    np.testing.assert_allclose(ours_cos, cos[0, :, :half].numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(ours_sin, sin[0, :, :half].numpy(), rtol=0, atol=2e-6)


@pytest.mark.parametrize("graph, kind", [("vision_encoder", "int8"), ("embed_tokens", "int8"),
                                         ("vision_encoder", "uint8"), ("decoder_model_merged", "uint8")])
def test_dynamic_quantisation_writes_what_onnxruntime_s_quantiser_writes(graph: str, kind: str, tmp_path: Path) -> None:
    """export.quantize.quantize_graph (numpy) against onnxruntime.quantization.quantize_dynamic
    on the same fp32 graph: the same tensors, bit for bit, and the same nodes."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from smolvlm_desktop.export.quantize import quantize_graph

    source = TINY / "onnx" / f"{graph}.onnx"
    quantize_graph(source, tmp_path / "ours.onnx", kind)
    quantize_dynamic(source, tmp_path / "ort.onnx", weight_type=QuantType.QInt8 if kind == "int8" else QuantType.QUInt8,
                     op_types_to_quantize=["MatMul", "Gather"], extra_options={"DefaultTensorType": 1})
    ours, theirs = onnx.load(str(tmp_path / "ours.onnx")), onnx.load(str(tmp_path / "ort.onnx"))
    tensors = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    expected = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype and np.array_equal(tensors[name], value), name

    def nodes(model: object) -> list[tuple]:
        return sorted((n.op_type, tuple(n.input), tuple(n.output),
                       tuple(sorted(str(onnx.helper.get_attribute_value(a)) for a in n.attribute)))
                      for n in model.graph.node)

    assert nodes(ours) == nodes(theirs)


def test_a_model_too_big_for_one_onnx_file_is_refused_before_any_work(tmp_path: Path) -> None:
    """A 2.2B-sized text model (its decoder ~7 GB of float32) is refused with the reason, from
    the header alone (the file here holds only a header: no tensor is read)."""
    from smolvlm_desktop.export.build import build_from_safetensors

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3", "tie_word_embeddings": True}))
    header = json.dumps({"model.text_model.layers.0.mlp.up_proj.weight":
                         {"dtype": "BF16", "shape": [2048, 2**20], "data_offsets": [0, 0]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ExportError, match="decoder_model_merged.onnx would hold 8.6 GB"):
        build_from_safetensors(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_config_that_leaves_tying_out_uses_the_embedding_when_the_file_has_no_head(
        checkpoint: Path, tmp_path: Path) -> None:
    """config.json written by transformers 4 omits tie_word_embeddings when it is its default
    (True there, False in transformers 5); with no lm_head.weight in the file the head is the
    embedding, and the built decoder is the committed one."""
    from smolvlm_desktop.export.decoder import build_decoder

    config = json.loads((checkpoint / "config.json").read_text())
    del config["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    untied = read_config(tmp_path)
    assert untied.tie_word_embeddings is False
    build_decoder(untied.text, read_safetensors(checkpoint), tmp_path / "decoder.onnx", tied=False)
    assert (tmp_path / "decoder.onnx").read_bytes() == (TINY / "onnx" / "decoder_model_merged.onnx").read_bytes()


def test_an_untied_checkpoint_gets_its_own_lm_head(checkpoint: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from onnx import numpy_helper

    from smolvlm_desktop.export.decoder import build_decoder

    tensors = dict(read_safetensors(checkpoint).items())
    head = np.random.default_rng(0).standard_normal(tensors["model.text_model.embed_tokens.weight"].shape)
    tensors["lm_head.weight"] = head.astype(np.float32)
    safetensors_numpy.save_file(tensors, str(tmp_path / "model.safetensors"))
    config = json.loads((checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    untied = read_config(tmp_path)
    build_decoder(untied.text, read_safetensors(tmp_path), tmp_path / "decoder.onnx", tied=untied.tie_word_embeddings)
    graph = onnx.load(str(tmp_path / "decoder.onnx")).graph
    (lm_head,) = [t for t in graph.initializer if t.name.startswith("lm_head")]
    assert np.array_equal(numpy_helper.to_array(lm_head), tensors["lm_head.weight"].T)
