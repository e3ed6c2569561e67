"""A model folder in the Hugging Face layout, read exactly as released.

Every number comes from the files (none is hard-coded), because the three SmolVLM sizes and
SmolVLM2 differ in tile size, image tokens per tile, special tokens and stop ids. Two layouts of
the processor settings exist in the wild: the flat `preprocessor_config.json` of the official
release, and the newer form nested inside `processor_config.json`; both are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .types import ModelFolderError

GRAPH_NAMES = ("vision_encoder", "embed_tokens", "decoder_model_merged")
# File suffix of each ONNX variant as released ("" is fp32).
VARIANT_SUFFIXES = {
    "fp32": "", "fp16": "_fp16", "int8": "_int8", "uint8": "_uint8", "q4": "_q4",
    "q4f16": "_q4f16", "bnb4": "_bnb4", "quantized": "_quantized",
}
# What the CPU loads when the user does not say: the int8 files are the fastest there.
CPU_VARIANT_ORDER = ("int8", "uint8", "quantized", "fp32")


@dataclass(frozen=True)
class ImageProcessorConfig:
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


@dataclass(frozen=True)
class ModelFiles:
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

    def choose_variant(self, requested: str | None = None) -> str:
        """The variant to load: the one asked for, else the best one present for the CPU."""
        if requested is not None:
            if requested not in VARIANT_SUFFIXES:
                raise ModelFolderError(
                    f"unknown variant {requested!r}; known variants: {', '.join(VARIANT_SUFFIXES)}")
            if requested not in self.variants:
                raise ModelFolderError(
                    f"{self.folder} has no complete {requested} variant (expected "
                    f"{', '.join(expected_files(requested))}); present: {self._present()}")
            return requested
        for variant in CPU_VARIANT_ORDER:
            if variant in self.variants:
                return variant
        return next(iter(self.variants))

    def graph_path(self, graph: str, variant: str) -> Path:
        try:
            return self.variants[variant][graph]
        except KeyError:
            raise ModelFolderError(f"{self.folder} has no {graph} graph for variant {variant}") from None

    def _present(self) -> str:
        return ", ".join(sorted(self.variants)) or "none"


def expected_files(variant: str) -> list[str]:
    suffix = VARIANT_SUFFIXES[variant]
    return [f"onnx/{g}{suffix}.onnx" for g in GRAPH_NAMES]


def read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise ModelFolderError(f"{path.parent} is not a SmolVLM model folder: {path.name} is missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} should hold a JSON object")
    return data


def load_model_files(folder: str | Path) -> ModelFiles:
    """Read a model folder; raise ModelFolderError saying exactly what is wrong."""
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
    image_proc_raw = image_processor_dict(folder, processor_config)
    generation_config = read_json(folder / "generation_config.json", required=False)
    return ModelFiles(
        folder=folder,
        name=display_name(folder, config),
        config=config,
        generation_config=generation_config,
        image_processor=parse_image_processor(image_proc_raw, folder),
        image_seq_len=image_seq_len(config, processor_config),
        image_token_id=image_token_id(config, folder),
        chat_template=chat_template(folder, tokenizer_config),
        tokenizer_path=tokenizer_path,
        tokenizer_config=tokenizer_config,
        stop_ids=stop_ids(generation_config, tokenizer_config, config, tokenizer_path),
        variants=find_variants(folder),
    )


def display_name(folder: Path, config: dict) -> str:
    name = folder.name
    if name in ("", ".") or name.startswith("snapshots"):
        name = str(config.get("_name_or_path", "")).rstrip("/").split("/")[-1] or "model"
    return name


def image_processor_dict(folder: Path, processor_config: dict) -> dict:
    """The flat official file first; else the newer form nested in processor_config.json."""
    flat = read_json(folder / "preprocessor_config.json", required=False)
    if flat:
        return flat
    nested = processor_config.get("image_processor")
    if isinstance(nested, dict):
        return nested
    raise ModelFolderError(
        f"{folder} has no image processor settings: expected preprocessor_config.json, or an "
        "'image_processor' section in processor_config.json")


def _edge(value: Any, key: str, folder: Path) -> int:
    if isinstance(value, dict) and "longest_edge" in value:
        return int(value["longest_edge"])
    if isinstance(value, dict) and "height" in value:
        return int(value["height"])
    raise ModelFolderError(f"{folder}: image processor setting {key!r} lacks 'longest_edge'")


def parse_image_processor(raw: dict, folder: Path) -> ImageProcessorConfig:
    mean = tuple(float(x) for x in raw.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(x) for x in raw.get("image_std", (0.5, 0.5, 0.5)))
    if "max_image_size" not in raw or "size" not in raw:
        raise ModelFolderError(f"{folder}: image processor settings need 'size' and 'max_image_size'")
    return ImageProcessorConfig(
        longest_edge=_edge(raw["size"], "size", folder),
        tile_size=_edge(raw["max_image_size"], "max_image_size", folder),
        do_resize=bool(raw.get("do_resize", True)),
        do_image_splitting=bool(raw.get("do_image_splitting", True)),
        do_rescale=bool(raw.get("do_rescale", True)),
        rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
        do_normalize=bool(raw.get("do_normalize", True)),
        image_mean=mean,  # type: ignore[arg-type]
        image_std=std,  # type: ignore[arg-type]
        resample=int(raw.get("resample", 1)),
        do_pad=bool(raw.get("do_pad", True)),
        do_convert_rgb=bool(raw.get("do_convert_rgb", True)),
    )


def image_seq_len(config: dict, processor_config: dict) -> int:
    if "image_seq_len" in processor_config:
        return int(processor_config["image_seq_len"])
    vision = config.get("vision_config", {})
    try:
        patches = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
    except KeyError:
        raise ModelFolderError("config.json lacks vision_config.image_size/patch_size and "
                               "processor_config.json lacks image_seq_len") from None
    return patches // int(config.get("scale_factor", 1)) ** 2


def image_token_id(config: dict, folder: Path) -> int:
    for key in ("image_token_id", "image_token_index"):
        if key in config:
            return int(config[key])
    raise ModelFolderError(f"{folder}/config.json lacks image_token_id")


def chat_template(folder: Path, tokenizer_config: dict) -> str:
    """chat_template.json, then chat_template.jinja, then tokenizer_config.json."""
    as_json = read_json(folder / "chat_template.json", required=False)
    if isinstance(as_json.get("chat_template"), str):
        return as_json["chat_template"]
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
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


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


def token_id_from_tokenizer(tokenizer_path: Path, content: str) -> int | None:
    """Look a special token's id up in tokenizer.json without building the tokenizer."""
    try:
        data = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{tokenizer_path} is not valid JSON: {exc}") from None
    for token in data.get("added_tokens", []):
        if token.get("content") == content:
            return int(token["id"])
    vocab = data.get("model", {}).get("vocab", {})
    return int(vocab[content]) if isinstance(vocab, dict) and content in vocab else None


def stop_ids(generation_config: dict, tokenizer_config: dict, config: dict,
             tokenizer_path: Path) -> tuple[int, ...]:
    ids = _ids(generation_config.get("eos_token_id"))
    if not ids:
        ids = _ids(config.get("text_config", {}).get("eos_token_id"))
    eos = tokenizer_config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if isinstance(eos, str):
        found = token_id_from_tokenizer(tokenizer_path, eos)
        if found is not None:
            ids.append(found)
    # <end_of_utterance> closes every assistant turn in SmolVLM's template.
    end = token_id_from_tokenizer(tokenizer_path, "<end_of_utterance>")
    if end is not None:
        ids.append(end)
    return tuple(dict.fromkeys(ids))


def find_variants(folder: Path) -> dict[str, dict[str, Path]]:
    onnx_dir = folder / "onnx"
    if not onnx_dir.is_dir():
        raise ModelFolderError(
            f"{folder} has no onnx/ folder: expected {', '.join(expected_files('int8'))} "
            "(or another variant). To convert a PyTorch checkpoint: smolvlm-desktop models export")
    variants: dict[str, dict[str, Path]] = {}
    for variant, suffix in VARIANT_SUFFIXES.items():
        paths = {g: onnx_dir / f"{g}{suffix}.onnx" for g in GRAPH_NAMES}
        if all(p.is_file() for p in paths.values()):
            variants[variant] = paths
    if not variants:
        present = ", ".join(sorted(p.name for p in onnx_dir.glob("*.onnx"))) or "no .onnx files"
        raise ModelFolderError(
            f"{onnx_dir} has no complete set of graphs: each variant needs "
            f"{', '.join(GRAPH_NAMES)} (e.g. {', '.join(expected_files('int8'))}); found {present}")
    return variants
