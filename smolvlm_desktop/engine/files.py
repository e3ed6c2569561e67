"""A model folder in the Hugging Face layout, read exactly as released.

Every number comes from the files (none is hard-coded), because the three SmolVLM sizes and
SmolVLM2 differ in tile size, image tokens per tile, special tokens and stop ids. Two layouts of
the image processor settings exist in the wild: the flat `preprocessor_config.json` of the
official release, and the form newer transformers save, nested inside `processor_config.json`;
both are read, with the same precedence as transformers (nested first).

Nothing here opens a session or builds the tokenizer: reading a folder is cheap, so the model
manager can list folders and explain what is wrong with one before anything heavy happens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .types import ModelFolderError

if TYPE_CHECKING:
    from .families import Family

GRAPH_NAMES = ("vision_encoder", "embed_tokens", "decoder_model_merged")
# A quantised variant whose own vision graph is absent reads pictures with the fp32 one. Some
# releases' quantised vision graphs are slower on a CPU than fp32: FastVLM's official _int8
# vision graph turns its convolutions into ConvInteger with int8 weights, which ONNX Runtime's
# CPU runs several times slower than fp32 Conv (docs/FASTVLM_FORMAT.md), so its pull fetches
# the fp32 vision graph beside the int8 text graphs (catalog `fp32_vision_for`).
VISION_GRAPH = GRAPH_NAMES[0]
# This project's int8 builds carry a second decoder for reading long prompts, named after the
# variant's decoder with this suffix (decoder_model_merged_int8_prompt.onnx): same inputs and
# outputs, weights in the form that is fast for many rows (export/quantize.py). Optional: the
# official files have none, and the engine then reads prompts with the one decoder.
PROMPT_GRAPH_SUFFIX = "_prompt"
# File suffix of each ONNX variant as released ("" is fp32).
VARIANT_SUFFIXES = {
    "fp32": "", "fp16": "_fp16", "int8": "_int8", "uint8": "_uint8", "q4": "_q4",
    "q4f16": "_q4f16", "bnb4": "_bnb4", "quantized": "_quantized",
}
# What the CPU loads when the user does not say: the int8 files are the fastest there, and
# fp32 is the exact one. fp16/q4 variants are slower than int8 on most CPUs.
CPU_VARIANT_ORDER = ("int8", "uint8", "quantized", "fp32")
# Closes every assistant turn in the SmolVLM chat template, so generation always stops there
# (the Idefics3 processor names this token the same way).
END_OF_UTTERANCE = "<end_of_utterance>"


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The Idefics3 image processor settings, as the folder states them."""

    longest_edge: int  # size.longest_edge: the image is resized so its longest edge is this
    tile_size: int  # max_image_size.longest_edge: the edge of one vision tile
    do_resize: bool
    do_image_splitting: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resample: int  # PIL resample id (1 = LANCZOS)
    do_pad: bool
    do_convert_rgb: bool
    do_center_crop: bool = False  # FastVLM's CLIP processor: crop the resized picture to tile_size


def prompt_graph_beside(decoder: Path) -> Path:
    """Where a decoder's prompt decoder (PROMPT_GRAPH_SUFFIX) is, whether or not it exists."""
    return decoder.with_name(decoder.stem + PROMPT_GRAPH_SUFFIX + decoder.suffix)


@dataclass(frozen=True)
class ModelFiles:
    """Everything in a model folder except the weights, plus where each graph variant lives."""

    folder: Path
    name: str
    config: dict
    generation_config: dict
    image_processor: ImageProcessorConfig
    image_seq_len: int
    image_token_id: int
    chat_template: str
    tokenizer_path: Path
    tokenizer_config: dict
    stop_ids: tuple[int, ...]
    variants: dict[str, dict[str, Path]]
    family: "Family"  # what differs per model family (families/): SmolVLM, FastVLM

    @property
    def text_config(self) -> dict:
        """The language model's settings, wherever this family's config.json keeps them."""
        return self.family.text_config(self.config)

    def choose_variant(self, requested: str | None = None) -> str:
        """The variant to load: the one asked for, else the best one present for the CPU."""
        if requested is None:
            for variant in CPU_VARIANT_ORDER:
                if variant in self.variants:
                    return variant
            return next(iter(self.variants))  # e.g. a folder with only fp16 or q4 graphs
        if requested not in VARIANT_SUFFIXES:
            raise ModelFolderError(
                f"unknown variant {requested!r}; known variants: {', '.join(VARIANT_SUFFIXES)}; "
                f"this folder has: {self._present()}")
        if requested not in self.variants:
            missing = [f for f in expected_files(requested) if not (self.folder / f).is_file()]
            raise ModelFolderError(
                f"{self.folder} has no complete {requested} variant: it needs "
                f"{', '.join(expected_files(requested))} and lacks {', '.join(missing)}; "
                f"complete variants here: {self._present()}")
        return requested

    def graph_path(self, graph: str, variant: str) -> Path:
        """The .onnx file of one graph ("vision_encoder", "embed_tokens", ...) of a variant."""
        try:
            return self.variants[variant][graph]
        except KeyError:
            raise ModelFolderError(
                f"{self.folder} has no {graph} graph for variant {variant!r}; "
                f"complete variants here: {self._present()}") from None

    def prompt_graph_path(self, variant: str) -> Path | None:
        """The variant's prompt decoder (PROMPT_GRAPH_SUFFIX), if the folder has one."""
        path = prompt_graph_beside(self.graph_path("decoder_model_merged", variant))
        return path if path.is_file() else None

    def _present(self) -> str:
        return ", ".join(self.variants) or "none"


def expected_files(variant: str) -> list[str]:
    """The three graph files a variant consists of, relative to the model folder."""
    suffix = VARIANT_SUFFIXES[variant]
    return [f"onnx/{g}{suffix}.onnx" for g in GRAPH_NAMES]


def read_json(path: Path, required: bool = True) -> dict:
    """A JSON object from a file; {} if absent and optional. Errors name the file and the flaw."""
    if not path.is_file():
        if required:
            raise ModelFolderError(f"{path.parent} is not a SmolVLM model folder: {path.name} is missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ModelFolderError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


def load_model_files(folder: str | Path) -> ModelFiles:
    """Read a model folder; raise ModelFolderError saying exactly what is wrong."""
    from .families import family_for  # here, not at the top: the families read their folders with this module

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ModelFolderError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is a file, not a model folder")
    config = read_json(folder / "config.json")
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelFolderError(f"{folder} is not a SmolVLM model folder: tokenizer.json is missing")
    tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
    processor_config = read_json(folder / "processor_config.json", required=False)
    generation_config = read_json(folder / "generation_config.json", required=False)
    added_tokens = read_added_tokens(tokenizer_path)
    family = family_for(config)
    return ModelFiles(
        folder=folder,
        name=display_name(folder, config),
        config=config,
        generation_config=generation_config,
        image_processor=family.read_image_processor(folder, processor_config),
        image_seq_len=family.image_seq_len(config, processor_config, folder),
        image_token_id=image_token_id(config, folder),
        chat_template=chat_template(folder, tokenizer_config),
        tokenizer_path=tokenizer_path,
        tokenizer_config=tokenizer_config,
        stop_ids=stop_ids(generation_config, tokenizer_config, config, added_tokens),
        variants=find_variants(folder),
        family=family,
    )


def display_name(folder: Path, config: dict) -> str:
    """The folder's name, except in a Hugging Face cache (…/models--org--name/snapshots/<hash>)
    where the folder is a commit hash and the repository name is what a user recognises."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return folder.name or str(config.get("_name_or_path", "")).rstrip("/").split("/")[-1] or "model"


def read_image_processor(folder: Path, processor_config: dict) -> ImageProcessorConfig:
    """The nested form in processor_config.json first, else the flat preprocessor_config.json:
    the precedence transformers uses, so a folder saved by a newer transformers over an older
    one is read the way transformers reads it."""
    nested = processor_config.get("image_processor")
    if isinstance(nested, dict):
        return parse_image_processor(nested, folder / "processor_config.json")
    flat_path = folder / "preprocessor_config.json"
    flat = read_json(flat_path, required=False)
    if flat:
        return parse_image_processor(flat, flat_path)
    raise ModelFolderError(
        f"{folder} has no image processor settings: expected preprocessor_config.json, or an "
        "'image_processor' section in processor_config.json")


def _edge(raw: dict, key: str, source: Path) -> int:
    value = raw.get(key)
    if isinstance(value, dict):
        edge = value.get("longest_edge", value.get("height"))
        if edge is not None:
            return int(edge)
    raise ModelFolderError(f"{source}: {key!r} should be an object with 'longest_edge', got {value!r}")


def _triple(value: Any) -> tuple[float, float, float]:
    """Mean/std as three floats; a single number applies to every channel (transformers allows it)."""
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = tuple(float(x) for x in value)
    if len(values) != 3:
        raise ValueError(f"expected 3 values (R, G, B), got {len(values)}")
    return values  # type: ignore[return-value]


def parse_image_processor(raw: dict, source: Path) -> ImageProcessorConfig:
    """Defaults are the Idefics3 image processor's own, for keys a config leaves out."""
    try:
        cfg = ImageProcessorConfig(
            longest_edge=_edge(raw, "size", source),
            tile_size=_edge(raw, "max_image_size", source),
            do_resize=bool(raw.get("do_resize", True)),
            do_image_splitting=bool(raw.get("do_image_splitting", True)),
            do_rescale=bool(raw.get("do_rescale", True)),
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
            do_normalize=bool(raw.get("do_normalize", True)),
            image_mean=_triple(raw.get("image_mean", 0.5)),
            image_std=_triple(raw.get("image_std", 0.5)),
            resample=int(raw.get("resample", 1)),
            do_pad=bool(raw.get("do_pad", True)),
            do_convert_rgb=bool(raw.get("do_convert_rgb", True)),
        )
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{source}: unreadable image processor setting: {exc}") from None
    if cfg.longest_edge < 1 or cfg.tile_size < 1:
        raise ModelFolderError(f"{source}: size and max_image_size must be positive")
    return cfg


def image_seq_len(config: dict, processor_config: dict, folder: Path) -> int:
    """Image tokens per tile: processor_config.json says it; else it follows from the vision
    tower, (image_size / patch_size)² patches merged scale_factor² at a time by pixel shuffle."""
    if "image_seq_len" in processor_config:
        return int(processor_config["image_seq_len"])
    vision = config.get("vision_config", {})
    try:
        patches = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
    except (KeyError, TypeError, ValueError):
        raise ModelFolderError(
            f"{folder}: config.json lacks vision_config.image_size/patch_size and "
            "processor_config.json lacks image_seq_len") from None
    return int(patches / int(config.get("scale_factor", 1)) ** 2)


def image_token_id(config: dict, folder: Path) -> int:
    for key in ("image_token_id", "image_token_index"):
        if key in config:
            return int(config[key])
    raise ModelFolderError(f"{folder}/config.json lacks image_token_id")


def chat_template(folder: Path, tokenizer_config: dict) -> str:
    """chat_template.json, then chat_template.jinja, then tokenizer_config.json (the order
    transformers' processor uses: the legacy JSON file wins when both files exist)."""
    as_json = read_json(folder / "chat_template.json", required=False)
    if isinstance(as_json.get("chat_template"), str):
        return as_json["chat_template"]
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFolderError(f"cannot read {jinja}: {exc}") from None
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        for entry in template:
            if isinstance(entry, dict) and entry.get("name") == "default":
                return str(entry["template"])
    raise ModelFolderError(
        f"{folder} has no chat template (chat_template.json, chat_template.jinja or "
        "tokenizer_config.json's chat_template)")


def read_added_tokens(tokenizer_path: Path) -> dict[str, int]:
    """Special-token text -> id, from tokenizer.json's added_tokens (read once: it is large)."""
    data = read_json(tokenizer_path)
    tokens: dict[str, int] = {}
    for token in data.get("added_tokens", []):
        if isinstance(token, dict) and "content" in token and "id" in token:
            tokens[str(token["content"])] = int(token["id"])
    return tokens


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


def _token_text(value: Any) -> str | None:
    """tokenizer_config stores a token as "text" or as {"content": "text", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def stop_ids(generation_config: dict, tokenizer_config: dict, config: dict,
             added_tokens: dict[str, int]) -> tuple[int, ...]:
    """generation_config's eos ids (else the text config's), the tokenizer's eos token and
    <end_of_utterance>, in that order, without repeats."""
    ids = _ids(generation_config.get("eos_token_id"))
    if not ids:
        text = config.get("text_config")
        ids = _ids((text if isinstance(text, dict) else config).get("eos_token_id"))
    for text in (_token_text(tokenizer_config.get("eos_token")), END_OF_UTTERANCE):
        if text is not None and text in added_tokens:
            ids.append(added_tokens[text])
    return tuple(dict.fromkeys(ids))


def find_variants(folder: Path) -> dict[str, dict[str, Path]]:
    """Every variant whose three graphs are all present, in VARIANT_SUFFIXES order."""
    onnx_dir = folder / "onnx"
    if not onnx_dir.is_dir():
        raise ModelFolderError(
            f"{folder} has no onnx/ folder: expected {', '.join(expected_files('int8'))} "
            "(or another variant such as fp32: the same names without _int8). To convert a PyTorch "
            "checkpoint: smolvlm-desktop models export SRC DST")
    variants: dict[str, dict[str, Path]] = {}
    for variant, suffix in VARIANT_SUFFIXES.items():
        paths = {g: onnx_dir / f"{g}{suffix}.onnx" for g in GRAPH_NAMES}
        if not paths[VISION_GRAPH].is_file() and (onnx_dir / f"{VISION_GRAPH}.onnx").is_file():
            paths[VISION_GRAPH] = onnx_dir / f"{VISION_GRAPH}.onnx"  # see VISION_GRAPH
        if all(p.is_file() for p in paths.values()):
            variants[variant] = paths
    if not variants:
        present = ", ".join(sorted(p.name for p in onnx_dir.glob("*.onnx"))) or "no .onnx files"
        raise ModelFolderError(
            f"{onnx_dir} has no complete set of graphs: each variant needs all of "
            f"{', '.join(GRAPH_NAMES)} (e.g. {', '.join(expected_files('fp32'))}, or the same "
            f"with _int8, _fp16, ...); found {present}")
    return variants
