"""Indexing and query speed of the search by meaning on a random-weight full-size CLIP ViT-B/32
(or, with --family siglip, SigLIP base/16 at 224 px).

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.clip_speed [--family clip|siglip] [--threads 2]
        [--variant int8] [--model-dir DIR] [--images 64]

Builds the model once into --model-dir (default: a folder in the system temp dir; ~700 MB:
fp32 + int8, same graphs and names as Xenova/clip-vit-base-patch32 or
Xenova/siglip-base-patch16-224, random weights), writes synthetic photos as JPEGs, and
measures, with semantic.index_images into a scratch library: images per second including JPEG
decode, resize and the library write, for 1024x768 photos and separately for 12-MP (4032x3024)
photos; then a text query: tokenize + text graph, and the brute-force search over 100,000
stored vectors of the model's size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


# family -> (what to call it, the folder's default name, its 8-bit variant, the writer)
FAMILIES = {"clip": ("CLIP ViT-B/32", "smolvlm-bench-clip-b32", "int8"),
            "siglip": ("SigLIP base/16-224", "smolvlm-bench-siglip-b16", "quantized")}


def build(folder: Path, family: str = "clip") -> None:
    from smolvlm_desktop.export.tiny_clip import write_tiny_clip
    from smolvlm_desktop.export.tiny_siglip import write_tiny_siglip

    if (folder / "config.json").is_file():
        return
    print(f"building a random-weight {FAMILIES[family][0]} in {folder} (a few minutes)", flush=True)
    staging = folder.with_name(folder.name + ".partial")
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    (write_tiny_siglip if family == "siglip" else write_tiny_clip)(staging, full_size=True)
    staging.rename(folder)


def photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Smooth random pictures (JPEG-compressible like photos), saved at quality 90."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        rng = np.random.default_rng(i)
        small = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        path = folder / f"photo{i:04d}.jpg"
        small.resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
        out.append(path)
    return out


def index_rate(model, images: list[Path]) -> tuple[float, float]:
    """(images per second of wall time, CPU milliseconds per image over all threads). On a
    shared machine the second is the steadier figure: 2 free cores give at most
    2000 / cpu_ms images per second."""
    from smolvlm_desktop.library.db import Library
    from smolvlm_desktop.library.vectors import VectorStore
    from smolvlm_desktop.semantic import index_images

    with tempfile.TemporaryDirectory() as tmp, Library(Path(tmp) / "lib.sqlite3") as lib:
        store = VectorStore(lib)
        index_images(model, store, images[:8])  # warm-up: first runs allocate
        start, cpu = time.perf_counter(), time.process_time()
        result = index_images(model, store, images[8:])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert result.failed == 0
        return result.done / elapsed, 1000 * cpu / result.done


def main() -> None:
    from smolvlm_desktop.engine.embeddings import EmbeddingModel
    from smolvlm_desktop.library.vectors import top_indices

    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=FAMILIES, default="clip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", help="default: the 8-bit one (int8; SigLIP: quantized)")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    name, folder_name, eight_bit = FAMILIES[args.family]
    args.variant = args.variant or eight_bit
    args.model_dir = args.model_dir or Path(tempfile.gettempdir()) / folder_name
    build(args.model_dir, args.family)
    model = EmbeddingModel.load(args.model_dir, variant=args.variant, provider="cpu", threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        normal = photos(Path(tmp) / "normal", args.images + 8, (1024, 768))
        rate, cpu_ms = index_rate(model, normal)
        print(f"{name}, index, 1024x768 JPEGs: {rate:.1f} images/s, {cpu_ms:.0f} CPU ms/image "
              f"({args.variant}, {args.threads} threads; load average {os.getloadavg()[0]:.1f})", flush=True)
        big = photos(Path(tmp) / "big", max(args.images // 4, 8) + 8, (4032, 3024))
        rate, cpu_ms = index_rate(model, big)
        print(f"index, 12-MP JPEGs:    {rate:.1f} images/s, {cpu_ms:.0f} CPU ms/image", flush=True)
    texts = [f"a photo of a {w}" for w in ("cat", "receipt", "whiteboard with a diagram", "x-ray of a hand")]
    model.embed_texts(texts[:1])
    text_ms = []
    for text in texts * 5:
        start = time.perf_counter()
        model.embed_texts([text])
        text_ms.append((time.perf_counter() - start) * 1000)
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((100_000, model.files.dim), dtype=np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    query_ms = []
    for text in texts * 5:
        start = time.perf_counter()
        q = model.embed_texts([text])[0]
        top_indices(stored @ q, 50)
        query_ms.append((time.perf_counter() - start) * 1000)
    print(f"text embedding: median {statistics.median(text_ms):.1f} ms; text query over 100,000 "
          f"{model.files.dim}-d vectors: median {statistics.median(query_ms):.1f} ms, max {max(query_ms):.1f} ms "
          f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
