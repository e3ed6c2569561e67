"""A tiny random-weight SigLIP in the transformers.js ONNX layout (docs/CLIP_FORMAT.md), with a
real SentencePiece tokenizer.

SigLIP's tokenizer is a SentencePiece unigram model (`spiece.model`, T5's layout: <pad> 0,
</s> 1, <unk> 2), and transformers' SiglipTokenizer cleans the text first: lower case, ASCII
punctuation removed, runs of whitespace made one space, ends stripped. transformers has no fast
SigLIP tokenizer; the `tokenizer.json` that transformers.js releases carry was converted outside
transformers (the unmerged SiglipConverter of huggingface/transformers#29969). So the tiny
SigLIP gets a SentencePiece model trained here on a few lines of text and a `tokenizer.json`
converted from it with transformers' own SentencePiece converter (`SpmConverter`), given
SigLIP's text clean-up and T5's "$A </s>" post-processor, as that pull request does.
tests/test_embeddings.py proves that the app's tokens equal SiglipTokenizer's (slow,
sentencepiece) and the fast tokenizer's on odd texts.

Needs the export extra (torch, transformers, onnx) and sentencepiece; the app never imports this.
"""

from __future__ import annotations

import io
import json
import string
import sys
import warnings
from pathlib import Path
from typing import Any

from .tiny_clip import IMAGE_SIZE, SMALL, _CORPUS, _normalise, _quantize, seeded_model

SIGLIP_TEXT_TOKENS = 64  # SigLIP base's text length: its text graph has no mask, so pad to it
VOCAB_SIZE = 160
# The tokenizer's training text: the tiny CLIP's captions and a few lines in other scripts, so
# that non-Latin text has pieces of its own (and anything else becomes <unk>, as in SigLIP).
_SP_CORPUS = [line.strip() for line in _CORPUS.split(" . ")] + [
    "一张猫的照片", "白板上的图表", "صورة قطة على الأريكة", "кошка на диване", "рентген руки",
    "café naïve émoji à la plage", "ＦＵＬＬＷＩＤＴＨ text", "straße und fluß",
]
# Python's whitespace (str.isspace, what `\s` and str.strip match): the tokenizer.json cleans
# text with exactly the characters SiglipTokenizer.canonicalize_text does.
_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def train_sentencepiece() -> bytes:
    """A unigram SentencePiece model, the same bytes on every run (one thread, fixed input)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SP_CORPUS * 4), model_writer=out, vocab_size=VOCAB_SIZE,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        num_threads=1, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


def _class(chars: str) -> str:
    """A regex character class of exactly `chars`."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


def siglip_converter() -> Any:
    """transformers' SpmConverter with SigLIP's text clean-up (SiglipTokenizer.canonicalize_text)
    before SentencePiece's own normaliser, and </s> after every text."""
    from tokenizers import Regex, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter

    class SiglipConverter(SpmConverter):
        def normalizer(self, proto: Any) -> Any:
            steps = [normalizers.Lowercase()] if self.original_tokenizer.do_lower_case else []
            steps += [normalizers.Replace(Regex(_class(string.punctuation)), ""),
                      normalizers.Replace(Regex(_class(_WHITESPACE) + "+"), " "),
                      normalizers.Replace(Regex(f"^{_class(_WHITESPACE)}+|{_class(_WHITESPACE)}+$"), "")]
            charsmap = proto.normalizer_spec.precompiled_charsmap
            if charsmap:
                steps.append(normalizers.Precompiled(charsmap))
            # SentencePiece's remove_extra_whitespaces, after its own character map
            steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
            return normalizers.Sequence(steps)

        def post_processor(self) -> Any:
            eos = self.original_tokenizer.convert_tokens_to_ids("</s>")
            return processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                 special_tokens=[("</s>", eos)])

    return SiglipConverter


def write_siglip_tokenizer(out: Path) -> Any:
    """spiece.model, tokenizer.json and the configs into `out`; returns the slow tokenizer."""
    from transformers import PreTrainedTokenizerFast, SiglipTokenizer

    (out / "spiece.model").write_bytes(train_sentencepiece())
    slow = SiglipTokenizer(str(out / "spiece.model"), model_max_length=SIGLIP_TEXT_TOKENS)
    slow.save_pretrained(out)  # tokenizer_config.json, special_tokens_map.json
    fast = PreTrainedTokenizerFast(tokenizer_object=siglip_converter()(slow).converted(),
                                   eos_token="</s>", unk_token="<unk>", pad_token="</s>",
                                   model_max_length=SIGLIP_TEXT_TOKENS)
    fast.backend_tokenizer.save(str(out / "tokenizer.json"))
    return slow


def build_tiny_siglip(vocab_size: int, full_size: bool = False) -> Any:
    """A SiglipModel with the real structure, random weights from a fixed seed. full_size=True:
    siglip-base-patch16-224's sizes (SiglipConfig's defaults), for measuring speed."""
    from transformers import SiglipConfig, SiglipModel

    text = {"vocab_size": vocab_size, "max_position_embeddings": SIGLIP_TEXT_TOKENS,
            "pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None}
    vision = {"image_size": IMAGE_SIZE, "patch_size": 16 if full_size else 32}
    config = (SiglipConfig(text_config=text, vision_config=vision) if full_size else
              SiglipConfig(text_config={**text, **SMALL}, vision_config={**vision, **SMALL}))
    return seeded_model(SiglipModel, config, spread=not full_size)


def preprocessor_config() -> dict[str, Any]:
    """google/siglip-base-patch16-224's SiglipImageProcessor settings: 224x224, no crop, 0.5."""
    return {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
            "rescale_factor": 1 / 255, "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}


def _towers(model: Any) -> tuple[Any, Any]:
    """SiglipVisionModel and SiglipTextModel as transformers.js exports them: both give
    last_hidden_state and pooler_output (the embedding), with `model`'s weights."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self, tower: Any, argument: str) -> None:
            super().__init__()
            self.tower, self.argument = tower, argument

        def forward(self, x: Any) -> Any:
            o = self.tower(**{self.argument: x})
            return o.last_hidden_state, o.pooler_output

    return Tower(model.vision_model, "pixel_values").eval(), Tower(model.text_model, "input_ids").eval()


def _export(module: Any, example: Any, path: Path, name: str) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[name],
                          output_names=["last_hidden_state", "pooler_output"],
                          dynamic_axes={name: {0: "batch_size"}, "last_hidden_state": {0: "batch_size"},
                                        "pooler_output": {0: "batch_size"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    _normalise(path)


def write_tiny_siglip(out: Path, full_size: bool = False) -> None:
    """The whole folder into `out` (new): configs, the SentencePiece tokenizer, fp32 graphs and
    their 8-bit `_quantized` twins (the suffix of Xenova/siglip-base-patch16-224)."""
    import torch

    out.mkdir(parents=True)
    slow = write_siglip_tokenizer(out)
    model = build_tiny_siglip(slow.vocab_size, full_size)
    model.config.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    onnx_dir = out / "onnx"
    onnx_dir.mkdir()
    vision, text = _towers(model)
    _export(vision, torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), onnx_dir / "vision_model.onnx", "pixel_values")
    _export(text, torch.full((1, SIGLIP_TEXT_TOKENS), 1), onnx_dir / "text_model.onnx", "input_ids")
    for graph in ("vision_model", "text_model"):
        _quantize(onnx_dir / f"{graph}.onnx", onnx_dir / f"{graph}_quantized.onnx")
