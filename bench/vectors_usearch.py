"""The alternative the brute-force store was measured against: usearch (HNSW, 8-bit vectors).

    OMP_NUM_THREADS=2 python -m bench.vectors_usearch [--rows 100000]

Needs `pip install usearch` (not a dependency of the app). Reports build time, memory and
query time of an HNSW index with i8 vectors, and of usearch's exact search over f16 vectors,
and the recall@10 of the HNSW answers against the exact ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.vectors import random_unit, rss_mb


def main() -> None:
    from usearch.index import Index, search

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows
    data = random_unit(rows)
    queries = random_unit(30, seed=1)
    exact = data @ queries.T
    truth = [set(np.argsort(-exact[:, i])[:10]) for i in range(len(queries))]

    before = rss_mb()
    index = Index(ndim=data.shape[1], metric="cos", dtype="i8")
    start = time.perf_counter()
    index.add(np.arange(rows), data, threads=2)
    built = time.perf_counter() - start
    times, hits = [], 0
    for i, q in enumerate(queries):
        t = time.perf_counter()
        found = index.search(q, 10)
        times.append((time.perf_counter() - t) * 1000)
        hits += len(truth[i] & set(int(k) for k in found.keys))
    print(f"{rows:,} rows, usearch HNSW i8: built in {built:.1f} s (2 threads), index "
          f"{index.memory_usage / 1e6:.0f} MB (RSS grew {rss_mb() - before:.0f} MB); query median "
          f"{statistics.median(times):.2f} ms; recall@10 {hits / (10 * len(queries)):.3f}")

    f16 = data.astype(np.float16)
    times = []
    for q in queries:
        t = time.perf_counter()
        search(f16, q.astype(np.float16), 10, metric="cos", exact=True, threads=2)
        times.append((time.perf_counter() - t) * 1000)
    print(f"{rows:,} rows, usearch exact f16: {f16.nbytes / 1e6:.0f} MB; query median "
          f"{statistics.median(times):.1f} ms")


if __name__ == "__main__":
    main()
