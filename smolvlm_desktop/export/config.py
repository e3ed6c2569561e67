"""A checkpoint's ``config.json``, read without transformers, with transformers' defaults.

Why: building the graphs on a user's machine must not import transformers, yet a released
config leaves out what equals the default (SmolVLM-500M has no ``num_hidden_layers``). The
defaults below are those of transformers' ``LlamaConfig``, ``Idefics3VisionConfig`` and
``Idefics3Config``; the graph builders read attributes with ``getattr`` and so take either
this or a transformers config object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .layout import ExportError

MODEL_TYPES = ("idefics3", "smolvlm")

_TEXT_DEFAULTS: dict[str, Any] = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None,
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "rope_parameters": None, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False,
}
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1152, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 16,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}


@dataclass(frozen=True)
class CheckpointConfig:
    """What the graph builders need from config.json."""

    model_type: str
    text: Any  # attributes as in transformers' LlamaConfig
    vision: Any  # attributes as in Idefics3VisionConfig
    scale_factor: int
    tie_word_embeddings: bool


def config_namespace(values: Any, defaults: dict[str, Any], where: str) -> SimpleNamespace:
    """A config section as attributes, transformers' defaults filling what it leaves out
    (num_key_value_heads defaults to num_attention_heads, as the config classes do)."""
    if values is not None and not isinstance(values, dict):
        raise ExportError(f"config.json: {where} is not an object")
    merged = {**defaults, **(values or {})}
    if merged.get("num_key_value_heads") is None and "num_attention_heads" in merged:
        merged["num_key_value_heads"] = merged["num_attention_heads"]
    return SimpleNamespace(**merged)


def read_config(folder: Path) -> CheckpointConfig:
    """config.json of a SmolVLM checkpoint folder; ExportError when absent or not SmolVLM."""
    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{folder}: no config.json, so not a transformers checkpoint folder") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("model_type") not in MODEL_TYPES:
        found = data.get("model_type") if isinstance(data, dict) else None
        raise ExportError(f"{folder}: model_type {found!r} is not one of {', '.join(MODEL_TYPES)}")
    text = config_namespace(data.get("text_config"), _TEXT_DEFAULTS, "text_config")
    vision = config_namespace(data.get("vision_config"), _VISION_DEFAULTS, "vision_config")
    # transformers ties the LM head to the embedding per the top-level flag (default False),
    # not the text config's copy.
    tie = bool(data.get("tie_word_embeddings", False))
    return CheckpointConfig(str(data["model_type"]), text, vision, int(data.get("scale_factor", 2)), tie)
