"""Image and text embeddings with a CLIP-style model: what makes "find by meaning" work.

An embedding model has two graphs (docs/CLIP_FORMAT.md): `vision_model` turns a 224-px image
into a vector, `text_model` turns a text into a vector in the same space; the cosine of two
vectors says how alike their meanings are. Everything is read from the model folder, exactly as
released for transformers.js (CLIP: `image_embeds`/`text_embeds`; SigLIP: `pooler_output`), and
the pre-processing and tokenizer do exactly what transformers' CLIPImageProcessor and
CLIPTokenizer, or SiglipImageProcessor and SiglipTokenizer, do (tests/test_embeddings.py and
tests/test_embeddings_siglip.py prove it on odd inputs).

Sessions come from runtime.open_graph (same providers and CPU fall-back as the VLM). No Qt,
no network, no writes: the caller picks any cache folder.

    model = EmbeddingModel.load("~/models/clip-vit-base-patch32")
    vectors = model.embed_images([load_for_embedding(path, model.files.processor)])
    query = model.embed_texts(["a receipt"])[0]
    scores = vectors @ query
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .files import CPU_VARIANT_ORDER, VARIANT_SUFFIXES, _token_text, read_json
from .images import load_image, probe_image
from .runtime import GraphSession, open_graph
from .types import ModelFolderError

GRAPHS = ("vision_model", "text_model")
# The embedding each family's graphs give, first name found wins (docs/CLIP_FORMAT.md).
EMBEDDING_OUTPUTS = {"vision_model": ("image_embeds", "pooler_output"),
                     "text_model": ("text_embeds", "pooler_output")}
FAMILIES = ("clip", "siglip")
# Images are decoded at no more than this many times the model's input edge on the short side:
# a 12-MP JPEG is reduced while decoding (4-8x faster) and still resized down by bicubic.
DECODE_MARGIN = 2


@dataclass(frozen=True)
class ImageSettings:
    """preprocessor_config.json of a CLIP or SigLIP model, with transformers' defaults."""

    resize_shortest: int | None  # CLIP: the short edge becomes this, aspect kept
    resize_to: tuple[int, int] | None  # SigLIP: (height, width), aspect not kept
    crop: tuple[int, int] | None  # (height, width) of the centre crop, or None
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int  # PIL id; 3 = bicubic

    @property
    def input_edge(self) -> int:
        """The shortest edge the image needs before resizing, so decoding can be reduced."""
        if self.crop:
            return max(self.crop)
        if self.resize_to:
            return max(self.resize_to)
        return self.resize_shortest or 224


@dataclass(frozen=True)
class EmbeddingFiles:
    """An embedding model folder, read (no session is opened here)."""

    folder: Path
    name: str
    family: str  # "clip" or "siglip"
    dim: int
    processor: ImageSettings
    tokenizer_path: Path
    max_tokens: int
    pad_to_max: bool  # SigLIP's text graph has no attention mask: pad like its training
    pad_token: str | None  # tokenizer_config's pad token (CLIP: <|endoftext|>)
    variants: dict[str, dict[str, Path]]
    # SigLIP: clean the text as SiglipTokenizer does (see canonical_text); None for CLIP, whose
    # tokenizer.json does its own clean-up. The value says whether to lower-case.
    siglip_lower_case: bool | None = None
    eos_token: str | None = None  # tokenizer_config's end token (SigLIP: </s>, ends every text)

    @property
    def key(self) -> str:
        """What stored vectors are tagged with: vectors of different models never mix."""
        return f"{self.name}/{self.dim}"

    def choose_variant(self, requested: str | None = None) -> str:
        if requested is None:
            return next((v for v in CPU_VARIANT_ORDER if v in self.variants), next(iter(self.variants)))
        if requested not in self.variants:
            raise ModelFolderError(f"{self.folder} has no complete {requested!r} variant "
                                   f"(vision_model and text_model); it has: {', '.join(self.variants)}")
        return requested


def is_embedding_folder(folder: Path) -> bool:
    """A CLIP/SigLIP folder (config model_type), as opposed to a chat model."""
    try:
        return read_json(Path(folder) / "config.json").get("model_type") in FAMILIES
    except ModelFolderError:
        return False


def _pair(value: object) -> tuple[int, int] | None:
    """{"height": h, "width": w} or a single edge -> (h, w); anything else -> None."""
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, int):
        return value, value
    return None


def read_image_settings(folder: Path, family: str) -> ImageSettings:
    raw = read_json(folder / "preprocessor_config.json")
    size = raw.get("size", {"shortest_edge": 224} if family == "clip" else {"height": 224, "width": 224})
    # The original openai/clip-vit-base-patch32 file says "size": 224, "crop_size": 224: a
    # bare number is the shortest edge for CLIP (transformers' default_to_square=False).
    shortest = size.get("shortest_edge") if isinstance(size, dict) else (
        size if isinstance(size, int) and family == "clip" else None)
    default_mean = (0.48145466, 0.4578275, 0.40821073) if family == "clip" else (0.5, 0.5, 0.5)
    default_std = (0.26862954, 0.26130258, 0.27577711) if family == "clip" else (0.5, 0.5, 0.5)
    try:
        return ImageSettings(
            resize_shortest=int(shortest) if shortest else None,
            resize_to=None if shortest else _pair(size),
            crop=_pair(raw.get("crop_size")) if raw.get("do_center_crop", family == "clip") else None,
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
            mean=tuple(float(x) for x in raw.get("image_mean", default_mean)),  # type: ignore[arg-type]
            std=tuple(float(x) for x in raw.get("image_std", default_std)),  # type: ignore[arg-type]
            resample=int(raw.get("resample", 3)),
        )
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{folder / 'preprocessor_config.json'}: unreadable setting: {exc}") from None


def find_embedding_variants(folder: Path) -> dict[str, dict[str, Path]]:
    onnx_dir = folder / "onnx"
    variants = {}
    for variant, suffix in VARIANT_SUFFIXES.items():
        paths = {g: onnx_dir / f"{g}{suffix}.onnx" for g in GRAPHS}
        if all(p.is_file() for p in paths.values()):
            variants[variant] = paths
    if not variants:
        present = (", ".join(sorted(p.name for p in onnx_dir.glob("*.onnx"))) or "no .onnx files"
                   if onnx_dir.is_dir() else "no onnx/ folder")
        raise ModelFolderError(
            f"{folder} has no complete embedding model: each variant needs onnx/vision_model.onnx "
            f"and onnx/text_model.onnx (or both with the same suffix, e.g. _int8, _quantized); "
            f"found {present}")
    return variants


def load_embedding_files(folder: str | Path) -> EmbeddingFiles:
    """Read an embedding model folder; ModelFolderError says what is wrong."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"embedding model folder {folder} does not exist")
    config = read_json(folder / "config.json")
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ModelFolderError(f"{folder} is not an embedding model: config.json model_type is "
                               f"{family!r}, expected one of {', '.join(FAMILIES)}")
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelFolderError(f"{folder} has no tokenizer.json")
    tok_config = read_json(folder / "tokenizer_config.json", required=False)
    text_config = config.get("text_config", {})
    max_tokens = int(min(tok_config.get("model_max_length", 10**9),
                         text_config.get("max_position_embeddings", 77 if family == "clip" else 64)))
    dim = int(config.get("projection_dim") or text_config.get("projection_size")
              or text_config.get("hidden_size") or 0)
    siglip = family == "siglip"
    return EmbeddingFiles(
        folder=folder, name=folder.resolve().name, family=family, dim=dim,
        processor=read_image_settings(folder, family), tokenizer_path=tokenizer_path,
        max_tokens=max_tokens, pad_to_max=siglip,
        pad_token=_token_text(tok_config.get("pad_token", "</s>" if siglip else None)),
        siglip_lower_case=bool(tok_config.get("do_lower_case", True)) if siglip else None,
        eos_token=_token_text(tok_config.get("eos_token", "</s>" if siglip else None)),
        variants=find_embedding_variants(folder))


# --- text --------------------------------------------------------------------------------------

# Python's own whitespace, as SiglipTokenizer's re.sub(r"\s+", " ", ...) and str.strip() see it
_SPACES = re.compile(r"\s+")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonical_text(text: str, lower_case: bool = True) -> str:
    """SigLIP's text clean-up, as transformers' SiglipTokenizer.canonicalize_text does it (from
    big_vision, where SigLIP was trained): lower case, ASCII punctuation removed, whitespace
    runs made one space, ends stripped. Done here, not left to tokenizer.json, so the tokens are
    right whether or not a release's converted tokenizer.json does it too (it is idempotent)."""
    if lower_case:
        text = text.lower()
    return _SPACES.sub(" ", text.translate(_NO_PUNCTUATION)).strip()


# --- images ------------------------------------------------------------------------------------


def load_for_embedding(path: str | Path, settings: ImageSettings) -> Image.Image:
    """Decode `path` for embedding: RGB, EXIF-oriented, alpha on white (engine/images.py's
    rules), with a large JPEG reduced while decoding but never below DECODE_MARGIN times the
    model's input on its short side, so the bicubic resize still sees enough pixels."""
    _, (width, height) = probe_image(path)
    need_short = DECODE_MARGIN * settings.input_edge
    short, long = min(width, height), max(width, height)
    target = math.ceil(long * need_short / short) if short > need_short else None
    return load_image(path, target_edge=target).image


def preprocess(image: Image.Image, settings: ImageSettings) -> np.ndarray:
    """One RGB image -> float32 [3, H, W], as transformers' CLIPImageProcessor (PIL backend)
    and SiglipImageProcessor do it: resize, centre crop, rescale in float64, normalise."""
    if image.mode != "RGB":
        raise ValueError("preprocess expects an RGB image (load_for_embedding gives one)")
    width, height = image.size
    if settings.resize_shortest:
        short, long = sorted((width, height))
        new_short, new_long = settings.resize_shortest, int(settings.resize_shortest * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        assert settings.resize_to is not None
        size = (settings.resize_to[1], settings.resize_to[0])
    if size != image.size:
        image = image.resize(size, resample=Image.Resampling(settings.resample), reducing_gap=None)
    pixels = np.asarray(image)
    if settings.crop:
        crop_h, crop_w = settings.crop
        top, left = (pixels.shape[0] - crop_h) // 2, (pixels.shape[1] - crop_w) // 2
        if top < 0 or left < 0:  # cannot happen after a shortest-edge resize to >= crop
            raise ValueError("image smaller than the crop after resizing")
        pixels = pixels[top:top + crop_h, left:left + crop_w]
    scaled = (pixels.astype(np.float64) * settings.rescale_factor).astype(np.float32)
    mean = np.asarray(settings.mean, dtype=np.float32)
    std = np.asarray(settings.std, dtype=np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1).astype(np.float32)


# --- the model ---------------------------------------------------------------------------------


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit length per row (a zero row stays zero instead of becoming NaN)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


class EmbeddingModel:
    """Both graphs of one embedding model, loaded; thread-compatible like the VLM's sessions."""

    def __init__(self, files: EmbeddingFiles, variant: str, vision: GraphSession,
                 text: GraphSession) -> None:
        from tokenizers import Tokenizer

        self.files = files
        self.variant = variant
        self.vision = vision
        self.text = text
        self._outputs = {g: _embedding_output(s) for g, s in (("vision_model", vision), ("text_model", text))}
        self.tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
        self.tokenizer.no_padding()
        pad = self.tokenizer.token_to_id(files.pad_token) if files.pad_token else None
        self.pad_id = pad if pad is not None else 0
        self.append_eos = self._append_eos()
        self.tokenizer.enable_truncation(files.max_tokens - (1 if self.append_eos is not None else 0))

    def _append_eos(self) -> int | None:
        """SigLIP's texts end with </s> (SiglipTokenizer adds it). A tokenizer.json whose
        post-processor does not add it gets it from here, after truncation, so a long text
        still ends with it. None: nothing to add (CLIP; or the tokenizer.json adds it)."""
        if self.files.family != "siglip" or not self.files.eos_token:
            return None
        eos = self.tokenizer.token_to_id(self.files.eos_token)
        ends = self.tokenizer.encode("a").ids
        return None if eos is None or (ends and ends[-1] == eos) else eos

    @classmethod
    def load(cls, folder: str | Path, variant: str | None = None, provider: str = "auto",
             threads: int | None = None, cache_dir: Path | None = None) -> "EmbeddingModel":
        files = load_embedding_files(folder)
        chosen = files.choose_variant(variant)
        paths = files.variants[chosen]
        sessions = [open_graph(g, paths[g], provider, threads, cache_dir) for g in GRAPHS]
        return cls(files, chosen, *sessions)

    @property
    def key(self) -> str:
        return self.files.key

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [n, length]: CLIPTokenizer's (SiglipTokenizer's) ids, truncated to max_tokens
        with the end token kept, padded with the pad id to the longest (SigLIP: to max_tokens)."""
        if self.files.siglip_lower_case is not None:
            texts = [canonical_text(t, self.files.siglip_lower_case) for t in texts]
        rows = [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]
        if self.append_eos is not None:
            rows = [row + [self.append_eos] for row in rows]
        length = self.files.max_tokens if self.files.pad_to_max else max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
        return ids

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [n, dim], unit length."""
        if not texts:
            return np.zeros((0, self.files.dim), dtype=np.float32)
        out = self.text.run({"input_ids": self.tokenize(texts)}, outputs=[self._outputs["text_model"]])
        return normalise(np.asarray(out[0], dtype=np.float32))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 [n, dim], unit length, for decoded RGB images."""
        if not images:
            return np.zeros((0, self.files.dim), dtype=np.float32)
        pixels = np.stack([preprocess(im, self.files.processor) for im in images])
        return self.embed_pixels(pixels)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = self.vision.run({"pixel_values": pixels}, outputs=[self._outputs["vision_model"]])
        return normalise(np.asarray(out[0], dtype=np.float32))

    def embed_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        return self.embed_images([load_for_embedding(p, self.files.processor) for p in paths])


def _embedding_output(graph: GraphSession) -> str:
    for name in EMBEDDING_OUTPUTS[graph.name]:
        if name in graph.output_names:
            return name
    raise ModelFolderError(
        f"{graph.path.name} gives none of the embedding outputs "
        f"{', '.join(EMBEDDING_OUTPUTS[graph.name])}; its outputs are {', '.join(graph.output_names)}")
