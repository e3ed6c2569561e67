"""Build the tiny random-weight SmolVLM shipped in smolvlm_desktop/data/tiny-smolvlm/.

    .venv/bin/python scripts/build_tiny_model.py [--out FOLDER]

Builds the PyTorch checkpoint (smolvlm_desktop.export.tiny) in a temporary folder, exports it
to the official ONNX layout (smolvlm_desktop.export: fp32 + int8, and uint8 only if the
folder stays within the size budget) and replaces FOLDER with the result. Running it twice
gives byte-identical files; the sha256 of every file is printed so that is easy to check.
Needs the export extra (torch, transformers, onnx).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smolvlm_desktop.export import GRAPHS, export_checkpoint, quantize_graph  # noqa: E402
from smolvlm_desktop.export.tiny import SIZE_BUDGET, build_tiny_checkpoint  # noqa: E402

DEFAULT_OUT = REPO / "smolvlm_desktop" / "data" / "tiny-smolvlm"

README = """\
# tiny-smolvlm: a random-weight test model

This folder is a SmolVLM in exactly the official Hugging Face layout (configs, tokenizer,
`onnx/vision_encoder*.onnx`, `onnx/embed_tokens*.onnx`, `onnx/decoder_model_merged*.onnx`,
same input/output names, same 49280-token vocabulary and special-token ids), but tiny and
with **random weights: its answers are noise**. It exists so the app, its tests and its
demo mode can run without downloading anything.

Architecture: 64-pixel tiles of 8x8 patches, a 2-layer vision encoder of width 32,
pixel shuffle x2 (16 image tokens per tile), a 2-layer Llama text model of width 8 with
grouped-query attention (2 heads, 1 KV head) and tied embeddings.

Built by `scripts/build_tiny_model.py` (deterministic: rebuilding gives identical bytes).
"""


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sha256_listing(folder: Path) -> list[str]:
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.stat().st_size:>9}  {path.relative_to(folder).as_posix()}")
    return lines


def build(out: Path) -> None:
    """Build into a staging folder, then swap it in for `out`."""
    with tempfile.TemporaryDirectory(prefix="tiny-smolvlm-") as tmp:
        checkpoint = build_tiny_checkpoint(Path(tmp) / "checkpoint")
        staging = Path(tmp) / "model"
        export_checkpoint(checkpoint, staging, quantize=("int8",))
        (staging / "README.md").write_text(README, encoding="utf-8")
        add_uint8_if_it_fits(staging)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staging, out)


def add_uint8_if_it_fits(folder: Path) -> None:
    onnx_dir = folder / "onnx"
    added = []
    for name in GRAPHS:
        target = onnx_dir / f"{name}_uint8.onnx"
        quantize_graph(onnx_dir / f"{name}.onnx", target, "uint8")
        added.append(target)
    if folder_size(folder) > SIZE_BUDGET:
        for path in added:
            path.unlink()
        print("uint8 variants left out: they would exceed the size budget")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folder to (re)write")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    build(args.out)
    print("\n".join(sha256_listing(args.out)))
    size = folder_size(args.out)
    print(f"{args.out}: {size} bytes ({size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f} s")
    if size > SIZE_BUDGET:
        print(f"error: over the {SIZE_BUDGET} byte budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
