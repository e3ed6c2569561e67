"""Build the tiny random-weight SigLIP shipped in smolvlm_desktop/data/tiny-siglip/.

    .venv/bin/python scripts/build_tiny_siglip.py [--out FOLDER]

Builds it (smolvlm_desktop.export.tiny_siglip) in a staging folder next to FOLDER, then swaps it
in. The sha256 of every file is printed so that two builds are easy to compare.
Needs the export extra (torch, transformers, onnx, sentencepiece).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from build_tiny_clip import build  # noqa: E402
from smolvlm_desktop.export.tiny_siglip import write_tiny_siglip  # noqa: E402

DEFAULT_OUT = REPO / "smolvlm_desktop" / "data" / "tiny-siglip"

README = """\
# tiny-siglip: a random-weight test embedding model with a real SentencePiece tokenizer

A SigLIP in the transformers.js ONNX layout of `Xenova/siglip-base-patch16-224`
(docs/CLIP_FORMAT.md): `onnx/vision_model.onnx` and `onnx/text_model.onnx` (last_hidden_state
and pooler_output), their 8-bit `_quantized` twins, SigLIP's 224x224 pre-processing without a
crop (mean = std = 0.5), texts padded to 64 tokens. The tokenizer is a SentencePiece unigram
model trained on a few lines of text (`spiece.model`, what transformers' SiglipTokenizer
reads) and its `tokenizer.json` (what the app reads), converted with transformers'
SentencePiece converter and SigLIP's text clean-up. Two layers of width 32 per tower,
**random weights: its search results are noise**. It exists so the SigLIP code paths and
their tests run without downloading anything.

Built by `scripts/build_tiny_siglip.py`.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return build(parser.parse_args().out, write_tiny_siglip, README, "tiny SigLIP")


if __name__ == "__main__":
    sys.exit(main())
