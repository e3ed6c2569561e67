"""Build the tiny random-weight CLIP shipped in smolvlm_desktop/data/tiny-clip/.

    .venv/bin/python scripts/build_tiny_clip.py [--out FOLDER]

Builds it (smolvlm_desktop.export.tiny_clip) in a staging folder next to FOLDER, then swaps it in.
The sha256 of every file is printed so that two builds are easy to compare.
Needs the export extra (torch, transformers, onnx).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from build_tiny_model import folder_size, sha256_listing  # noqa: E402
from smolvlm_desktop.export.tiny_clip import write_tiny_clip  # noqa: E402

DEFAULT_OUT = REPO / "smolvlm_desktop" / "data" / "tiny-clip"
SIZE_BUDGET = 2_000_000

README = """\
# tiny-clip: a random-weight test embedding model

A CLIP in exactly the transformers.js ONNX layout of `Xenova/clip-vit-base-patch32`
(docs/CLIP_FORMAT.md): `onnx/vision_model.onnx` (pixel_values -> image_embeds),
`onnx/text_model.onnx` (input_ids -> text_embeds), their `_int8` twins, the real 224-px
pre-processing settings and a CLIP tokenizer on a 634-token vocabulary. Two layers of width
32 per tower, 16-d embeddings, **random weights: its search results are noise**. It exists
so the semantic search and its tests run without downloading anything.

Built by `scripts/build_tiny_clip.py`.
"""


def build(out: Path, write: Callable[[Path], None], readme: str, label: str) -> int:
    """Write a tiny model with `write` into a staging folder beside `out`, check its size, then
    swap it in and print every file's sha256 (two builds are easy to compare)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / "model"
        write(staging)
        (staging / "README.md").write_text(readme, encoding="utf-8")
        size = folder_size(staging)
        if size > SIZE_BUDGET:
            print(f"{label} is {size:,} bytes, over the {SIZE_BUDGET:,} budget", file=sys.stderr)
            return 1
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    print("\n".join(sha256_listing(out)))
    print(f"{folder_size(out):,} bytes in {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return build(parser.parse_args().out, write_tiny_clip, README, "tiny CLIP")


if __name__ == "__main__":
    sys.exit(main())
