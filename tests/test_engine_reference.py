"""The ONNX engine against the transformers reference, on the same random weights.

fp32 must match transformers' greedy `generate` token for token. int8 cannot (random weights
give nearly flat logits, so free-running text drifts after a few tokens); it is judged under
teacher forcing: same prefix, compare the next-token logits position by position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import GenerationSettings, Message

pytestmark = pytest.mark.reference
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_NEW = 24


def gradient_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic image with structure in every tile (so tiles differ)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                     ((x + y) * 7) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from smolvlm_desktop.export.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


@pytest.fixture(scope="module")
def reference(checkpoint: Path):
    processor = transformers.AutoProcessor.from_pretrained(checkpoint)
    model = transformers.Idefics3ForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32).eval()
    return processor, model


def hf_messages(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": [{"type": "image"} for _ in m.images]
             + ([{"type": "text", "text": m.text}] if m.text else [])} for m in messages]


def reference_generate(reference, messages: list[Message], detail: int | None) -> list[int]:
    processor, model = reference
    text = processor.apply_chat_template(hf_messages(messages), add_generation_prompt=True)
    images = [img for m in messages for img in m.images]
    kwargs = {"size": {"longest_edge": detail}} if detail else {}
    inputs = processor(text=text, images=[images] if images else None, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stops = {2, 49279, 0}
    for i, tok in enumerate(new):
        if tok in stops:
            return new[:i]
    return new


CASES = {
    "split image (300x200 -> 4x3 tiles + global)": (
        [Message("user", "Describe this image.", images=(gradient_image(300, 200, 1),))], None),
    "square photo (4x4 tiles + global: a prompt long enough for the int8 prompt decoder)": (
        [Message("user", "Describe this image.", images=(gradient_image(300, 300, 8),))], None),
    "unsplit image (detail = one tile)": (
        [Message("user", "What is in this picture?", images=(gradient_image(120, 90, 2),))], 64),
    "tiny image scaled up (40x30)": (
        [Message("user", "Describe this image.", images=(gradient_image(40, 30, 3),))], None),
    "portrait image": (
        [Message("user", "Read the text.", images=(gradient_image(90, 200, 4),))], None),
    "two images in one turn": (
        [Message("user", "Compare these two pictures.",
                 images=(gradient_image(100, 80, 5), gradient_image(70, 150, 6)))], None),
    "two-turn chat": (
        [Message("user", "What is in this picture?", images=(gradient_image(160, 120, 7),)),
         Message("assistant", "A small brown dog."),
         Message("user", "What color is the car?")], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_transformers_token_for_token(case: str, reference, tiny_model) -> None:
    messages, detail = CASES[case]
    expected = reference_generate(reference, messages, detail)
    result = tiny_model.generate(messages, GenerationSettings(max_new_tokens=MAX_NEW, detail=detail))
    assert len(expected) >= 3, "reference produced too few tokens to compare; pick another prompt"
    assert result.token_ids == expected


def test_committed_model_has_the_reference_weights(checkpoint: Path, reference, tiny_model) -> None:
    """The committed ONNX files and a fresh build of the checkpoint agree on embeddings."""
    _, model = reference
    ids = np.array([[1, 2, 3, 100, 49190, 49279]], dtype=np.int64)
    ours = tiny_model._embed(ids, onnxruntime.RunOptions())
    with torch.no_grad():
        theirs = model.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


# --- int8 -----------------------------------------------------------------------------

# Bounds chosen from measurement on the committed tiny model (see the test below for the
# figures printed with -s); a regression in the quantisation or the decode loop breaks them.
INT8_MIN_TOP1_AGREEMENT = 0.90  # measured 0.973 over 150 positions
INT8_MIN_MEAN_COSINE = 0.99  # measured 0.9970


@pytest.fixture(scope="module")
def tiny_int8(tiny_model_dir: Path) -> VisionLanguageModel:
    return VisionLanguageModel.load(tiny_model_dir, variant="int8", provider="cpu", threads=1)


def test_int8_agrees_with_fp32_under_teacher_forcing(tiny_model, tiny_int8) -> None:
    agree, cosines = [], []
    for messages, detail in CASES.values():
        settings = GenerationSettings(max_new_tokens=MAX_NEW, detail=detail)
        continuation = tiny_model.generate(messages, settings).token_ids
        full = tiny_model.teacher_forced_logits(messages, continuation, settings)
        quant = tiny_int8.teacher_forced_logits(messages, continuation, settings)
        agree.extend(np.argmax(full, -1) == np.argmax(quant, -1))
        num = (full * quant).sum(-1)
        den = np.linalg.norm(full, axis=-1) * np.linalg.norm(quant, axis=-1)
        cosines.extend(num / den)
    top1, cosine = float(np.mean(agree)), float(np.mean(cosines))
    print(f"int8 vs fp32: top-1 agreement {top1:.3f}, mean logit cosine {cosine:.4f} "
          f"over {len(agree)} positions")
    assert top1 >= INT8_MIN_TOP1_AGREEMENT
    assert cosine >= INT8_MIN_MEAN_COSINE
