"""The int8 prompt decoder (issue 14): long prompts read with weights in the form that is fast
for many rows, answers decoded with the one that is fast for one; on the real tiny model.

The tiny model's longest edge is 256 px in 64-px tiles, so a square photo is 4x4 tiles and
the whole (17 x 16 image tokens): a prompt of over 256 tokens, PROMPT_GRAPH_MIN_TOKENS."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine.generate import PROMPT_GRAPH_MIN_TOKENS, DecoderState
from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import GenerationSettings, Message

import onnx  # noqa: E402, I001 - after smolvlm_desktop, which turns onnxruntime's telemetry off
import onnxruntime as ort  # noqa: E402

# The bars every int8 graph of the tiny model meets (tests/test_engine_reference.py).
INT8_MIN_TOP1_AGREEMENT = 0.90
INT8_MIN_MEAN_COSINE = 0.99
SETTINGS = GenerationSettings(max_new_tokens=24)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")


def ask(image: Image.Image) -> list[Message]:
    return [Message("user", "Describe this image.", images=(image,))]


@pytest.fixture(scope="module")
def int8(tiny_model_dir: Path) -> VisionLanguageModel:
    return VisionLanguageModel.load(tiny_model_dir, variant="int8", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path) -> VisionLanguageModel:
    return VisionLanguageModel.load(tiny_model_dir, variant="fp32", provider="cpu", threads=1)


def test_the_prompt_decoder_has_the_decoders_inputs_and_outputs_and_int8_rows(tiny_model_dir: Path) -> None:
    onnx_dir = tiny_model_dir / "onnx"
    decoder = ort.InferenceSession(str(onnx_dir / "decoder_model_merged_int8.onnx"), providers=["CPUExecutionProvider"])
    prompt = ort.InferenceSession(str(onnx_dir / "decoder_model_merged_int8_prompt.onnx"),
                                  providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in prompt.get_inputs()] == [(i.name, i.type) for i in decoder.get_inputs()]
    assert [(o.name, o.type) for o in prompt.get_outputs()] == [(o.name, o.type) for o in decoder.get_outputs()]
    ops = [n.op_type for n in onnx.load(str(onnx_dir / "decoder_model_merged_int8_prompt.onnx")).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 * 4  # 2 layers: qkv, o_proj, gate_up, down
    assert ops.count("MatMulNBits") == 1  # the head: one row after logits_to_keep
    assert "MatMul" not in ops


def test_a_long_prompt_opens_the_prompt_decoder_and_a_short_one_does_not(tiny_model_dir: Path) -> None:
    model = VisionLanguageModel.load(tiny_model_dir, variant="int8", provider="cpu", threads=1)
    short = model.generate(ask(photo(60, 40)), SETTINGS)
    assert short.timings.prompt_tokens < PROMPT_GRAPH_MIN_TOKENS
    assert model._prompt_decoder is None  # a one-tile picture never pays its memory
    long = model.generate(ask(photo(300, 300)), SETTINGS)
    assert long.timings.prompt_tokens >= PROMPT_GRAPH_MIN_TOKENS
    assert model._prompt_decoder is not None
    model.close()
    assert model._prompt_decoder is None


def test_the_fp32_variant_and_the_official_int8_files_have_no_prompt_decoder(
        tiny_model_dir: Path, tmp_path: Path, fp32: VisionLanguageModel) -> None:
    assert fp32._open_prompt_decoder is None
    official = tmp_path / "official"
    shutil.copytree(tiny_model_dir, official)
    (official / "onnx" / "decoder_model_merged_int8_prompt.onnx").unlink()
    model = VisionLanguageModel.load(official, variant="int8", provider="cpu", threads=1)
    assert model._open_prompt_decoder is None
    with_it = VisionLanguageModel.load(tiny_model_dir, variant="int8", provider="cpu", threads=1)
    with_it._open_prompt_decoder = None  # the same weights read by the one decoder
    assert model.generate(ask(photo(300, 300)), SETTINGS).token_ids == \
        with_it.generate(ask(photo(300, 300)), SETTINGS).token_ids


def test_a_prompt_read_in_two_pieces_equals_one_read(int8: VisionLanguageModel) -> None:
    """Each row is quantised on its own, so what a position gets does not depend on the other
    positions of the same call: a conversation that reads its prompt in two long pieces (a
    read-ahead, then the rest) keeps the cache a single read gives."""
    rng = np.random.default_rng(4)
    embeds = rng.standard_normal((1, 2 * PROMPT_GRAPH_MIN_TOKENS + 40, 8)).astype(np.float32)
    whole = DecoderState(int8.graphs["decoder_model_merged"], int8.cache_layout, int8.prompt_decoder)
    pieces = DecoderState(int8.graphs["decoder_model_merged"], int8.cache_layout, int8.prompt_decoder)
    want = whole.forward(embeds)
    pieces.forward(embeds[:, :PROMPT_GRAPH_MIN_TOKENS + 10])
    got = pieces.forward(embeds[:, PROMPT_GRAPH_MIN_TOKENS + 10:])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name in whole.past:
        np.testing.assert_allclose(pieces.past[name], whole.past[name], rtol=1e-5, atol=1e-5)


def test_the_prompt_decoder_is_used_and_stays_within_the_int8_bars_on_a_long_prompt(
        int8: VisionLanguageModel, fp32: VisionLanguageModel) -> None:
    """Teacher-forced against fp32 on prompts of 17 tiles: the prompt graph reads the prompt,
    the decode graph the rest; both within the bars the int8 decoder meets."""
    agree, cosines = [], []
    for seed in range(3):
        messages = ask(photo(300, 300 - 10 * seed, seed))
        continuation = fp32.generate(messages, SETTINGS).token_ids
        full = fp32.teacher_forced_logits(messages, continuation, SETTINGS)
        quant = int8.teacher_forced_logits(messages, continuation, SETTINGS)
        agree.extend(np.argmax(full, -1) == np.argmax(quant, -1))
        cosines.extend((full * quant).sum(-1) / (np.linalg.norm(full, axis=-1) * np.linalg.norm(quant, axis=-1)))
    assert int8._prompt_decoder is not None
    top1, cosine = float(np.mean(agree)), float(np.mean(cosines))
    print(f"int8 with the prompt decoder vs fp32: top-1 {top1:.3f}, mean cosine {cosine:.4f} over {len(agree)}")
    assert top1 >= INT8_MIN_TOP1_AGREEMENT
    assert cosine >= INT8_MIN_MEAN_COSINE


def test_a_row_of_the_prompt_decoder_does_not_depend_on_its_batch(tiny_model_dir: Path) -> None:
    """Per row, not per tensor: rows of very different range give, together, what each gives alone."""
    decoder = ort.InferenceSession(str(tiny_model_dir / "onnx" / "decoder_model_merged_int8_prompt.onnx"),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(6)
    scales = np.array([0.05, 1.0, 40.0], np.float32)[:, None, None]
    length = 12
    feeds = {"inputs_embeds": rng.standard_normal((3, length, 8)).astype(np.float32) * scales,
             "attention_mask": np.ones((3, length), np.int64),
             "position_ids": np.tile(np.arange(length), (3, 1))}
    for past in decoder.get_inputs()[3:]:  # [batch, kv_heads, past, head_dim]
        feeds[past.name] = np.zeros((3, past.shape[1], 0, past.shape[3]), np.float32)
    together = decoder.run(["logits"], feeds)[0]
    for row in range(3):
        alone = decoder.run(["logits"], {k: v[row:row + 1] for k, v in feeds.items()})[0]
        np.testing.assert_allclose(together[row], alone[0], rtol=1e-5, atol=1e-5)


def test_a_cluster_worker_is_shipped_the_prompt_decoder_with_the_int8_graphs(tiny_model_dir: Path) -> None:
    """A node that cannot see the model folder gets the files `model_listing` names: with the
    int8 graphs, the prompt decoder too, or that node would read long prompts slowly."""
    from smolvlm_desktop.cluster import model_listing

    int8 = model_listing(tiny_model_dir, "int8")
    assert "onnx/decoder_model_merged_int8_prompt.onnx" in int8
    assert "onnx/decoder_model_merged.onnx" not in int8
    assert not any("_prompt" in name for name in model_listing(tiny_model_dir, "fp32"))
