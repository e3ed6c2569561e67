"""The models the benchmark measures, and where they are built and cached.

Why random weights are enough: speed depends on the architecture (layer sizes, tile size,
sequence lengths), not on the weight values. So the "256m" architecture is the real
SmolVLM-256M-Instruct one, filled with seeded random numbers, exported with the project's own
exporter (fp32 + int8). It is about 2.1 GB on disk (checkpoint + fp32 + int8) and takes about two minutes to build, so it
lives outside the repository, in ``$SMOLVLM_BENCH_CACHE`` or ``~/.cache/smolvlm-desktop-bench/``,
in a folder named after a hash of everything that decides its contents; it is built once
and reused.

The "tiny" architecture is the bundled demo model (``smolvlm_desktop/data/tiny-smolvlm``):
nothing to build, so the test of the benchmark's machinery runs in seconds. It has no PyTorch
checkpoint on disk; the transformers side rebuilds the same weights from the same seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUNDLED_TINY = REPO / "smolvlm_desktop" / "data" / "tiny-smolvlm"
# Bump when the build recipe changes in a way the config hash cannot see. The exporter's own
# source is hashed in as well (EXPORTER_SOURCES), so a new graph recipe rebuilds the model.
BUILD_RECIPE = 1
EXPORTER_SOURCES = tuple(p.relative_to(REPO).as_posix()
                         for p in sorted((REPO / "smolvlm_desktop" / "export").glob("*.py")))
SEED = 256_000_001
# Tokens a greedy run would stop at (<|endoftext|>, <|im_end|>, <end_of_utterance>). Their
# embedding rows are zeroed: with tied embeddings their logit is then exactly 0 while the best
# of 49k random logits is far above 0, so every run generates the full number of tokens.
STOP_IDS = (0, 2, 49279)


@dataclass(frozen=True)
class Arch:
    """One benchmarked architecture: its config and the image sizes that give 1 and 5 tiles."""

    name: str
    config: dict[str, Any]  # Idefics3Config keyword arguments
    tile: int  # vision tile edge in pixels: an image this big is one vision pass
    longest_edge: int
    image_seq_len: int

    @property
    def key(self) -> str:
        """Short hash of everything that decides the built files."""
        blob = json.dumps({"config": self.config, "tile": self.tile, "longest_edge": self.longest_edge,
                           "image_seq_len": self.image_seq_len, "seed": SEED, "stop_ids": STOP_IDS,
                           "recipe": BUILD_RECIPE, "exporter": exporter_digest()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class BuiltModel:
    """Where each side reads the model from."""

    model_dir: Path  # official layout: configs, tokenizer, onnx/*.onnx (also the torch processor)
    checkpoint: Path | None  # save_pretrained folder; None = tiny weights rebuilt from the seed


def exporter_digest() -> str:
    """Hash of the code that builds the ONNX files."""
    digest = hashlib.sha256()
    for name in EXPORTER_SOURCES:
        digest.update((REPO / name).read_bytes())
    return digest.hexdigest()[:12]


def smolvlm_256m() -> Arch:
    """SmolVLM-256M-Instruct: SmolLM2-135M text model + SigLIP B/16 at 512 px, pixel shuffle x4."""
    from smolvlm_desktop.export.tiny import IMAGE_TOKEN_ID, VOCAB_SIZE

    tile, patch, scale = 512, 16, 4
    config = {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": IMAGE_TOKEN_ID,
        "scale_factor": scale,
        "tie_word_embeddings": True,
        "pad_token_id": 2,
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "image_size": tile, "patch_size": patch,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
        },
        "text_config": {
            "model_type": "llama", "vocab_size": VOCAB_SIZE, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "head_dim": 64, "hidden_act": "silu",
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
            "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        },
    }
    return Arch("256m", config, tile=tile, longest_edge=2048,
                image_seq_len=(tile // patch) ** 2 // scale**2)


def smolvlm_500m() -> Arch:
    """SmolVLM-500M-Instruct: the same vision tower and connector as 256M, with the
    SmolLM2-360M text model (960 wide, 32 layers, 15 heads over 5 key/value heads)."""
    base = smolvlm_256m()
    text = dict(base.config["text_config"], hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                num_attention_heads=15, num_key_value_heads=5, head_dim=64)
    return Arch("500m", dict(base.config, text_config=text), tile=base.tile, longest_edge=base.longest_edge,
                image_seq_len=base.image_seq_len)


def tiny() -> Arch:
    """The bundled demo model's architecture (read from export.tiny, which built it)."""
    from smolvlm_desktop.export import tiny as tm

    return Arch("tiny", tm.tiny_config_dict(), tile=tm.TILE, longest_edge=tm.LONGEST_EDGE,
                image_seq_len=tm.IMAGE_SEQ_LEN)


ARCHS = {"256m": smolvlm_256m, "500m": smolvlm_500m, "tiny": tiny}


def cache_root() -> Path:
    env = os.environ.get("SMOLVLM_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "smolvlm-desktop-bench"


def ensure_model(arch: Arch, cache: Path | None = None) -> BuiltModel:
    """The model folder for `arch`, built on first use (tiny: the bundled folder)."""
    if arch.name == "tiny":
        return BuiltModel(BUNDLED_TINY, None)
    folder = (cache or cache_root()) / f"smolvlm-{arch.name}-{arch.key}"
    built = BuiltModel(folder / "model", folder / "checkpoint")
    if (folder / "complete").is_file():
        return built
    staging = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"building the random-weight {arch.name} model in {folder} (once; a few minutes)")
    build_checkpoint(arch, staging / "checkpoint")
    log(f"checkpoint written ({time.perf_counter() - t0:.0f} s); exporting to ONNX fp32 + int8")
    from smolvlm_desktop.export import export_checkpoint

    export_checkpoint(staging / "checkpoint", staging / "model", quantize=("int8",))
    (staging / "complete").write_text(json.dumps({"arch": arch.name, "key": arch.key}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    log(f"model ready ({time.perf_counter() - t0:.0f} s)")
    return built


def build_checkpoint(arch: Arch, out_dir: Path) -> Path:
    """save_pretrained of a seeded random Idefics3 model + tokenizer and processor files."""
    import torch
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration

    from smolvlm_desktop.export import tiny as tm
    from smolvlm_desktop.export import quiet_progress_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    model = Idefics3ForConditionalGeneration(Idefics3Config(**arch.config))
    tm._randomise(model, SEED)  # the same seeded init the tiny model uses
    with torch.no_grad():
        model.get_input_embeddings().weight[list(STOP_IDS)] = 0.0
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, tm.END_OF_UTTERANCE_ID],
                                               pad_token_id=2)
    with quiet_progress_bars():
        model.eval().save_pretrained(out_dir)
    tm.write_tokenizer_files(out_dir)
    write_processor_files(arch, out_dir)
    return out_dir


def write_processor_files(arch: Arch, out_dir: Path) -> None:
    """The image processor and chat template in the official flat form, sized for `arch`."""
    from smolvlm_desktop.export.tiny import CHAT_TEMPLATE

    def write(name: str, data: dict[str, Any]) -> None:
        (out_dir / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    write("preprocessor_config.json", {
        "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "image_processor_type": "Idefics3ImageProcessor",
        "max_image_size": {"longest_edge": arch.tile}, "processor_class": "Idefics3Processor",
        "resample": 1, "rescale_factor": 1 / 255, "size": {"longest_edge": arch.longest_edge},
    })
    write("processor_config.json", {"image_seq_len": arch.image_seq_len,
                                    "processor_class": "Idefics3Processor"})
    write("chat_template.json", {"chat_template": CHAT_TEMPLATE})


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
