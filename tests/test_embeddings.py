"""The embedding runtime equals transformers' CLIP on the tiny random-weight CLIP shipped in
smolvlm_desktop/data/tiny-clip (built from tiny_clip.build_tiny_clip, whose seed is fixed):
graphs, image pre-processing and tokenizer, on odd inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine.embeddings import (EmbeddingModel, is_embedding_folder,
                                               load_embedding_files, load_for_embedding,
                                               preprocess)
from smolvlm_desktop.engine.types import ModelFolderError

TINY_CLIP = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-clip"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ODD_TEXTS = [
    "a photo of a cat",
    "",
    "  A   PHOTO\tof a\nCAT!!  ",
    "whiteboard " * 60,  # far past 77 tokens: truncated, end token kept
    "一张猫的照片",  # Chinese
    "صورة قطة",  # Arabic
    "кошка на диване",  # Cyrillic
    "🐱🐶 émoji & naïve café",
    "it's the dog's toy; they'll've",
]


@pytest.fixture(scope="module")
def reference():
    from smolvlm_desktop.export.tiny_clip import build_tiny_clip

    return build_tiny_clip()


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.CLIPTokenizer.from_pretrained(TINY_CLIP)


@pytest.fixture(scope="module")
def hf_processor():
    return transformers.CLIPImageProcessorPil.from_pretrained(TINY_CLIP)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model(request):
    return EmbeddingModel.load(TINY_CLIP, variant=request.param, provider="cpu", threads=1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _bound(model: EmbeddingModel) -> float:
    return 0.9999 if model.variant == "fp32" else 0.99


def test_the_folder_is_read_as_a_clip_embedding_model():
    files = load_embedding_files(TINY_CLIP)
    assert (files.family, files.dim, files.max_tokens) == ("clip", 16, 77)
    assert set(files.variants) == {"fp32", "int8"}
    assert files.choose_variant() == "int8"  # the CPU's choice
    assert is_embedding_folder(TINY_CLIP)
    assert not is_embedding_folder(TINY_CLIP.parent / "tiny-smolvlm")


def test_a_chat_model_folder_is_refused_with_the_reason():
    with pytest.raises(ModelFolderError, match="model_type"):
        load_embedding_files(TINY_CLIP.parent / "tiny-smolvlm")


def test_text_embeddings_equal_transformers(model, reference, hf_tokenizer):
    ours = model.embed_texts(ODD_TEXTS)
    batch = hf_tokenizer(ODD_TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        theirs = reference.get_text_features(**batch, return_dict=True).pooler_output.numpy()
    assert ours.shape == (len(ODD_TEXTS), 16)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert _cosines(ours, theirs).min() >= _bound(model)


def test_image_embeddings_equal_transformers(model, reference, hf_processor):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((224, 224), (480, 640), (900, 300))]
    ours = model.embed_images(images)
    pixels = hf_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = reference.get_image_features(pixel_values=pixels, return_dict=True).pooler_output.numpy()
    assert _cosines(ours, theirs).min() >= _bound(model)


def test_token_ids_equal_clip_tokenizer_on_odd_texts(hf_tokenizer):
    model = EmbeddingModel.load(TINY_CLIP, provider="cpu", threads=1)
    theirs = hf_tokenizer(ODD_TEXTS, padding=True, truncation=True)["input_ids"]
    assert model.tokenize(ODD_TEXTS).tolist() == theirs
    long_ids = model.tokenize(["whiteboard " * 60])[0]
    assert len(long_ids) == 77 and long_ids[-1] == hf_tokenizer.eos_token_id


def _write(tmp_path: Path, name: str, image: Image.Image, **save) -> Path:
    path = tmp_path / name
    image.save(path, **save)
    return path


def _odd_images(tmp_path: Path) -> dict[str, tuple[Path, Image.Image]]:
    """name -> (file, the image transformers is handed: oriented, alpha kept)."""
    rng = np.random.default_rng(1)
    noise = lambda h, w, c=3: rng.integers(0, 256, (h, w, c), dtype=np.uint8)  # noqa: E731
    out = {}
    tiny = Image.fromarray(noise(3, 5))
    out["tiny"] = (_write(tmp_path, "tiny.png", tiny), tiny)
    huge = Image.fromarray(noise(300, 6000))  # a panorama: the crop keeps its middle
    out["huge"] = (_write(tmp_path, "huge.png", huge), huge)
    tall = Image.fromarray(noise(677, 300))  # resized to 224x505: an odd overflow to crop
    out["tall"] = (_write(tmp_path, "tall.png", tall), tall)
    rgba = Image.fromarray(noise(240, 320, 4))
    out["alpha"] = (_write(tmp_path, "alpha.png", rgba), rgba)
    grey = Image.fromarray(noise(250, 260)[:, :, 0])
    out["grey"] = (_write(tmp_path, "grey.png", grey), grey.convert("RGB"))
    stored = Image.fromarray(noise(200, 400))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to show"
    path = _write(tmp_path, "rotated.png", stored, exif=exif.tobytes())
    out["exif"] = (path, stored.transpose(Image.Transpose.ROTATE_270))
    return out


def test_pixels_equal_clip_image_processor_on_odd_images(tmp_path, hf_processor):
    settings = load_embedding_files(TINY_CLIP).processor
    for name, (path, as_shown) in _odd_images(tmp_path).items():
        ours = preprocess(load_for_embedding(path, settings), settings)
        theirs = hf_processor(as_shown, return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 224, 224), name
        # alpha: transformers composites with alpha_composite, we with paste; both round to 8 bits
        tolerance = 0.02 if name == "alpha" else 1e-5
        assert np.abs(ours - theirs).max() <= tolerance, name


def test_a_big_jpeg_is_reduced_while_decoding_without_changing_its_embedding(tmp_path):
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((4000, 3000), Image.Resampling.BICUBIC)
    path = _write(tmp_path, "photo.jpg", photo, quality=95)
    settings = load_embedding_files(TINY_CLIP).processor
    decoded = load_for_embedding(path, settings)
    assert min(decoded.size) >= 448 and decoded.size[0] < 4000  # reduced, not below 2 x 224
    model = EmbeddingModel.load(TINY_CLIP, variant="fp32", provider="cpu", threads=1)
    full = model.embed_images([Image.open(path).convert("RGB")])
    assert float(_cosines(model.embed_images([decoded]), full)[0]) >= 0.999


def test_the_original_openai_preprocessor_file_with_bare_numbers_is_read_like_transformers(tmp_path):
    """openai/clip-vit-base-patch32 writes "size": 224 and "crop_size": 224 (older format)."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((TINY_CLIP / name).read_bytes())
    (folder / "onnx").mkdir()
    for name in ("vision_model.onnx", "text_model.onnx"):
        (folder / "onnx" / name).write_bytes((TINY_CLIP / "onnx" / name).read_bytes())
    (folder / "preprocessor_config.json").write_text(
        '{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true, '
        '"feature_extractor_type": "CLIPFeatureExtractor", '
        '"image_mean": [0.48145466, 0.4578275, 0.40821073], '
        '"image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}')
    settings = load_embedding_files(folder).processor
    assert (settings.resize_shortest, settings.resize_to, settings.crop) == (224, None, (224, 224))
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    expected = transformers.CLIPImageProcessorPil.from_pretrained(folder)(image, return_tensors="np")
    assert np.abs(preprocess(image, settings) - expected["pixel_values"][0]).max() <= 1e-5
