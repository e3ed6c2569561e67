"""A tiny random-weight CLIP in the transformers.js ONNX layout (docs/CLIP_FORMAT.md).

It exists so the semantic search, its tests and the demo can run without downloading the
600 MB of CLIP ViT-B/32: the graphs have the real names, inputs and outputs
(`onnx/vision_model.onnx`: pixel_values -> image_embeds; `onnx/text_model.onnx`: input_ids ->
text_embeds; `_int8` twins), the real 224-px pre-processing settings, and a tokenizer built by
transformers' own CLIPTokenizer (the real normaliser, pre-tokenizer, `</w>` BPE and
start/end tokens) on a small vocabulary. Only the weights are random and the sizes small.

Needs the export extra (torch, transformers, onnx); the app itself never imports this.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

SEED = 1234
# The real CLIP ViT-B/32 pre-processing (openai/clip-vit-base-patch32 preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_SIZE = 224
MAX_TEXT_TOKENS = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words the BPE merges are learned from: enough to exercise merging, small enough to ship.
_CORPUS = (
    "a photo of a cat sitting on the sofa . a dog running on the beach . the whiteboard with a "
    "diagram . a receipt from the shop . an x-ray of a hand . red car parked in the street . "
    "people at a birthday party with cake . mountains and a lake at sunset . a screenshot of "
    "code . the invoice and the contract . a plate of food . flowers in the garden ."
)
NUM_MERGES = 120
# The tiny towers' sizes (CLIP and SigLIP alike): two layers of width 32.
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _byte_encoder() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> visible character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _train_merges(text: str, count: int) -> list[tuple[str, str]]:
    """Plain BPE with CLIP's end-of-word suffix; ties broken by the pair itself, so the
    result never depends on hash order (the files must rebuild byte-identically)."""
    table = _byte_encoder()
    words: Counter[tuple[str, ...]] = Counter()
    for word in text.lower().split():
        chars = [table[b] for b in word.encode("utf-8")]
        words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary order: 256 bytes, the same with </w>, the merges, then the two
    special tokens last (as in the real 49408-token vocabulary)."""
    chars = list(_byte_encoder().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = _train_merges(_CORPUS, NUM_MERGES)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges,
                         model_max_length=MAX_TEXT_TOKENS)


def build_tiny_clip(full_size: bool = False) -> Any:
    """A CLIPModel with the real structure at toy sizes, random weights from a fixed seed.
    full_size=True: ViT-B/32's real sizes (12+12 layers, 768/512 wide, 512-d embeddings), for
    measuring speed (bench/clip_speed.py); only the vocabulary stays small."""
    from transformers import CLIPConfig, CLIPModel

    vocab, _ = build_vocab()
    text = {"vocab_size": len(vocab), "max_position_embeddings": MAX_TEXT_TOKENS,
            "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    vision = {"image_size": IMAGE_SIZE, "patch_size": 32}
    if full_size:  # CLIPConfig's defaults are ViT-B/32's
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
    else:
        config = CLIPConfig(text_config={**text, **SMALL}, vision_config={**vision, **SMALL},
                            projection_dim=16)
    return seeded_model(CLIPModel, config, spread=not full_size)


def seeded_model(model_class: Any, config: Any, spread: bool) -> Any:
    """`model_class(config)` in eval mode, its random weights drawn from SEED. spread=True (the
    tiny models) widens them, so that a wrong pixel or token shows in the embeddings."""
    import torch

    torch.manual_seed(SEED)
    model = model_class(config).eval()
    if spread:
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.normal_(0.0, 0.2)
    return model


def preprocessor_config() -> dict[str, Any]:
    return {
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD, "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": IMAGE_SIZE},
    }


def _export(module: Any, args: tuple, path: Path, inputs: list[str], output: str) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=[output],
                          dynamic_axes={**{n: {0: "batch_size"} for n in inputs},
                                        output: {0: "batch_size"},
                                        **({"input_ids": {0: "batch_size", 1: "sequence_length"}}
                                           if "input_ids" in inputs else {})},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    _normalise(path)


def _normalise(path: Path) -> None:
    """Drop what makes two builds differ (producer version, doc strings)."""
    import onnx

    model = onnx.load(str(path))
    model.producer_version = ""
    for node in model.graph.node:
        node.doc_string = ""
    onnx.save(model, str(path))


def _quantize(fp32: Path, out: Path) -> None:
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    _normalise(out)


def _towers(model: Any) -> tuple[Any, Any]:
    """The two graphs as released: CLIPVisionModelWithProjection (pixel_values ->
    image_embeds) and CLIPTextModelWithProjection (input_ids -> text_embeds), sharing
    `model`'s weights so they equal CLIPModel's own get_image/text_features."""
    import torch

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any) -> Any:
            return self.model.get_text_features(input_ids=input_ids, return_dict=True).pooler_output

    return Vision().eval(), Text().eval()


def write_tiny_clip(out: Path, full_size: bool = False) -> None:
    """Write the whole folder (configs, tokenizer, fp32 and int8 graphs) into `out` (new)."""
    import torch

    model = build_tiny_clip(full_size)
    tokenizer = build_tokenizer()
    out.mkdir(parents=True)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for extra in ("vocab.json", "merges.txt"):  # tokenizer.json says it all; keep the folder small
        (out / extra).unlink(missing_ok=True)
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    onnx_dir = out / "onnx"
    onnx_dir.mkdir()
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    ids = torch.tensor([tokenizer("a photo of a cat")["input_ids"]])
    vision, text = _towers(model)
    _export(vision, (pixels,), onnx_dir / "vision_model.onnx", ["pixel_values"], "image_embeds")
    _export(text, (ids,), onnx_dir / "text_model.onnx", ["input_ids"], "text_embeds")
    for graph in ("vision_model", "text_model"):
        _quantize(onnx_dir / f"{graph}.onnx", onnx_dir / f"{graph}_int8.onnx")
