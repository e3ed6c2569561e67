"""Search-by-meaning store: time per query and memory for N synthetic 512-d embeddings.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.vectors [--rows 100000 1000000] [--dim 512] [--sqlite]

--dim 768 is SigLIP base's embedding size (CLIP ViT-B/32: 512).

Brute force (library/vectors.py): float32 matrix @ query, then argpartition for the top 50.
--sqlite also measures storing the rows in a library file and loading them back (the first
query after start pays that; later queries use the cached matrix).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 512


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_unit(rows: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):  # in chunks: no float64 copy of the whole matrix
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def time_queries(matrix: np.ndarray, repeats: int = 30) -> list[float]:
    from smolvlm_desktop.library.vectors import top_indices

    queries = random_unit(repeats, seed=1, dim=matrix.shape[1])
    times = []
    for q in queries:
        start = time.perf_counter()
        top_indices(matrix @ q, 50)
        times.append((time.perf_counter() - start) * 1000)
    return times


def time_sqlite(matrix: np.ndarray) -> tuple[float, float]:
    from smolvlm_desktop.library.db import Library
    from smolvlm_desktop.library.vectors import VectorStore

    with tempfile.TemporaryDirectory() as tmp, Library(Path(tmp) / "lib.sqlite3") as lib:
        store = VectorStore(lib)
        start = time.perf_counter()
        for begin in range(0, len(matrix), 5000):
            store.add_many("bench/512", [(f"/photos/{i}.jpg", matrix[i], None)
                                         for i in range(begin, min(begin + 5000, len(matrix)))])
        stored = time.perf_counter() - start
        start = time.perf_counter()
        store.matrix("bench/512")
        return stored, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    import os

    for rows in args.rows:
        before = rss_mb()
        matrix = random_unit(rows, dim=args.dim)
        times = time_queries(matrix)
        print(f"{rows:>9,} rows x {args.dim}: matrix {matrix.nbytes / 1e6:,.0f} MB (peak RSS {rss_mb():,.0f} MB, "
              f"was {before:,.0f}); query median {statistics.median(times):.1f} ms, "
              f"max {max(times):.1f} ms (load average {os.getloadavg()[0]:.1f})")
        if args.sqlite:
            stored, loaded = time_sqlite(matrix)
            print(f"    sqlite: stored in {stored:.1f} s, loaded back in {loaded:.2f} s")
        del matrix


if __name__ == "__main__":
    main()
