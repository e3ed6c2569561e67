"""The embedding runtime equals transformers' SigLIP on the tiny random-weight SigLIP shipped in
smolvlm_desktop/data/tiny-siglip (scripts/build_tiny_siglip.py; its weights come from a fixed
seed, its tokenizer is a real SentencePiece model): the app's tokens equal SiglipTokenizer's
(slow, sentencepiece) and the fast tokenizer's (its tokenizer.json) on odd texts, the pixels
equal SiglipImageProcessor's on odd images, the embeddings equal SiglipModel's."""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_embeddings import ODD_TEXTS, _cosines, _odd_images

from smolvlm_desktop.engine.embeddings import (EmbeddingModel, canonical_text, load_embedding_files,
                                               load_for_embedding, preprocess)

TINY_SIGLIP = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-siglip"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

SIGLIP_ODD_TEXTS = ODD_TEXTS + [
    "一张猫的照片 " * 40,  # non-Latin and far past 64 tokens
    "   ",  # whitespace only: nothing but the end token
    "...!?",  # punctuation only: removed, as SigLIP was trained
    "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ！",  # full-width letters, space and "!" (NFKC in the charsmap)
    "a\u00a0b\u2003c\u3000d\u2028e\x1cf",  # Unicode spaces, a line separator, a file separator
    "İstanbul ΣΟΦΟΣ straße",  # case mappings that change length or depend on context
    "ﬁ ﬂ Ⅻ ①",  # compatibility characters
    "x-ray",
    "\u2581a\u2581b",  # SentencePiece's own space mark typed as text
    "👍🏽 ❤️‍🔥",  # emoji with a skin tone and a zero-width joiner
]


@pytest.fixture(scope="module")
def slow():
    return transformers.SiglipTokenizer.from_pretrained(TINY_SIGLIP)


@pytest.fixture(scope="module")
def fast():
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(TINY_SIGLIP / "tokenizer.json"), eos_token="</s>", unk_token="<unk>",
        pad_token="</s>", model_max_length=64)


@pytest.fixture(scope="module")
def reference(slow):
    from smolvlm_desktop.export.tiny_siglip import build_tiny_siglip

    return build_tiny_siglip(slow.vocab_size)


@pytest.fixture(scope="module", params=["fp32", "quantized"])
def model(request):
    return EmbeddingModel.load(TINY_SIGLIP, variant=request.param, provider="cpu", threads=1)


def _theirs(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, padding="max_length", truncation=True, max_length=64)["input_ids"]


def test_the_folder_is_read_as_a_siglip_embedding_model():
    files = load_embedding_files(TINY_SIGLIP)
    assert (files.family, files.dim, files.max_tokens, files.pad_to_max) == ("siglip", 32, 64, True)
    assert set(files.variants) == {"fp32", "quantized"}
    assert files.choose_variant() == "quantized"  # the CPU's choice: Xenova's 8-bit suffix
    assert (files.processor.resize_to, files.processor.crop) == ((224, 224), None)


def test_token_ids_equal_the_slow_and_the_fast_siglip_tokenizer_on_odd_texts(slow, fast):
    ours = EmbeddingModel.load(TINY_SIGLIP, provider="cpu", threads=1).tokenize(SIGLIP_ODD_TEXTS)
    assert ours.shape == (len(SIGLIP_ODD_TEXTS), 64)
    assert ours.tolist() == _theirs(slow, SIGLIP_ODD_TEXTS)
    assert ours.tolist() == _theirs(fast, SIGLIP_ODD_TEXTS)
    long_row = ours[SIGLIP_ODD_TEXTS.index("whiteboard " * 60)]
    assert long_row[-1] == slow.eos_token_id  # truncated to 63 pieces, the end token kept
    assert slow.pad_token_id == slow.eos_token_id and (long_row != slow.eos_token_id).sum() == 63
    assert ours[SIGLIP_ODD_TEXTS.index("   ")].tolist() == [slow.eos_token_id] * 64


# Characters a random text is drawn from: letters of several scripts and cases, punctuation,
# every kind of space, emoji, full-width and compatibility forms, SentencePiece's space mark.
# Not combining accents: see test_stacked_combining_accents_are_where_the_tokenizers_differ.
_POOLS = [string.ascii_lowercase, string.ascii_uppercase, string.punctuation, string.digits,
          " \t\n\r\x0b\x0c\x1c\x85\u00a0\u2003\u3000\u2028\u200b", "一张猫的照片白板", "صورة قطة",
          "кошкаКОШКА", "éèçñøåßİıΣσς", "🐱🐶👍🏽❤️‍🔥", "ｆｕｌｌＡＢＣ！？", "ﬁﬂⅫ①", "\u2581"]


def test_token_ids_equal_the_slow_tokenizer_on_random_texts(slow, fast):
    rng = random.Random(0)
    texts = ["".join(rng.choice(rng.choice(_POOLS)) for _ in range(rng.randint(0, 60)))
             for _ in range(600)]
    ours = EmbeddingModel.load(TINY_SIGLIP, provider="cpu", threads=1).tokenize(texts).tolist()
    theirs = _theirs(slow, texts)
    assert [t for t, a, b in zip(texts, ours, theirs) if a != b] == []
    assert ours == _theirs(fast, texts)


def test_stacked_combining_accents_are_where_the_tokenizers_differ(slow, fast):
    """A letter with two or more combining accents that NFKC composes: SentencePiece's
    normaliser and the tokenizers library's Precompiled one cut it differently (one piece
    against two). The app reads tokenizer.json as the fast tokenizer and transformers.js do,
    so it gives their tokens. A known difference, kept in view: if it goes away, say so."""
    text = "o\u0308\u0308\u0301"
    ours = EmbeddingModel.load(TINY_SIGLIP, provider="cpu", threads=1).tokenize([text]).tolist()
    assert ours == _theirs(fast, [text])
    assert ours != _theirs(slow, [text])
    single = "o\u0308 e\u0301"  # one accent each: the same everywhere
    assert EmbeddingModel.load(TINY_SIGLIP, provider="cpu", threads=1).tokenize([single]).tolist() \
        == _theirs(slow, [single])


def _with_tokenizer(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "siglip"
    shutil.copytree(TINY_SIGLIP, folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_a_tokenizer_json_without_siglips_clean_up_or_end_token_still_gives_siglips_tokens(tmp_path, slow):
    """The app cleans the text and ends it with </s> itself, so a release's tokenizer.json that
    leaves either out (a plain SentencePiece conversion) still gives SiglipTokenizer's ids."""
    def plain(data):
        steps = data["normalizer"]["normalizers"]
        data["normalizer"]["normalizers"] = [n for n in steps if n["type"] == "Precompiled"]
        data["post_processor"] = None

    folder = _with_tokenizer(tmp_path, plain)
    model = EmbeddingModel.load(folder, provider="cpu", threads=1)
    assert model.append_eos == slow.eos_token_id
    assert model.tokenize(SIGLIP_ODD_TEXTS).tolist() == _theirs(slow, SIGLIP_ODD_TEXTS)


def test_canonical_text_is_siglips_clean_up_and_idempotent():
    assert canonical_text("  A   PHOTO\tof a\nCAT!!  ") == "a photo of a cat"
    assert canonical_text("It's OK", lower_case=False) == "Its OK"
    for text in SIGLIP_ODD_TEXTS:
        once = canonical_text(text)
        assert canonical_text(once) == once


def _bound(model: EmbeddingModel) -> float:
    return 0.9999 if model.variant == "fp32" else 0.99


def test_text_embeddings_equal_siglip_model(model, reference, slow):
    ids = torch.tensor(_theirs(slow, SIGLIP_ODD_TEXTS))
    with torch.no_grad():
        theirs = reference.get_text_features(input_ids=ids, return_dict=True).pooler_output.numpy()
    ours = model.embed_texts(SIGLIP_ODD_TEXTS)
    assert ours.shape == (len(SIGLIP_ODD_TEXTS), 32)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert _cosines(ours, theirs).min() >= _bound(model)


def test_image_embeddings_equal_siglip_model(model, reference):
    processor = transformers.SiglipImageProcessorPil.from_pretrained(TINY_SIGLIP)
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((224, 224), (300, 200), (50, 900))]
    with torch.no_grad():
        theirs = reference.get_image_features(pixel_values=processor(images, return_tensors="pt")["pixel_values"],
                                              return_dict=True).pooler_output.numpy()
    assert _cosines(model.embed_images(images), theirs).min() >= _bound(model)


def test_pixels_equal_siglip_image_processor_on_odd_images(tmp_path):
    """Tiny, a 6000-px panorama, tall, alpha, grey, EXIF-rotated: 224x224 without a crop."""
    processor = transformers.SiglipImageProcessorPil.from_pretrained(TINY_SIGLIP)
    settings = load_embedding_files(TINY_SIGLIP).processor
    for name, (path, as_shown) in _odd_images(tmp_path).items():
        ours = preprocess(load_for_embedding(path, settings), settings)
        theirs = processor(as_shown, return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 224, 224), name
        # alpha: transformers composites with alpha_composite, we with paste; both round to 8 bits
        assert np.abs(ours - theirs).max() <= (0.02 if name == "alpha" else 1e-5), name
