"""Overhead of `caption --cluster` against a local batch on the same cores.

    .venv/bin/python bench/cluster.py [--arch 256m|tiny] [--images 40] [--new-tokens 32]
                                      [--cores 2] [--cluster local|HOST:PORT] [--json out.json]

Captions the same N one-tile JPEG photos (512 px: one vision pass) twice with the real
command, each in a fresh folder and process, with --write jsonl --no-library:

* local: one process, --threads CORES (the batch decodes groups of images together);
* cluster: --cluster ADDRESS with --threads 1, so Ray runs CORES actors of one thread each
  (`local` starts a private cluster of this machine's cores, as a user on one big machine would).

For each it reports the wall time of the whole command, the time to the first answer
(start-up: imports, model loads, and for the cluster Ray itself) and the steady rate, from
the first answer to the last (images per second). Overhead = cluster / local - 1, for the
whole command and for the steady part. Both runs use the same model files (see bench/arch.py:
the 256m architecture with random weights; "tiny" is the bundled demo model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import arch as arches  # noqa: E402 - bench/ is not a package on the path
from child import bench_image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        bench_image(size, seed=i).save(folder / f"photo{i:03d}.jpg", quality=90)


def timed_run(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall time, time to the first --json answer, and the steady rate after it."""
    start = time.perf_counter()
    arrivals = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=REPO) as child:
        assert child.stdout is not None and child.stderr is not None
        for line in child.stdout:
            if json.loads(line).get("ok"):
                arrivals.append(time.perf_counter() - start)
        stderr = child.stderr.read()
        if child.wait() != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    wall = time.perf_counter() - start
    steady = arrivals[-1] - arrivals[0]
    return {"wall_s": round(wall, 2), "first_answer_s": round(arrivals[0], 2),
            "images": len(arrivals),
            "steady_images_per_s": round((len(arrivals) - 1) / steady, 3) if steady > 0 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(arches.ARCHS), default="256m")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cluster", default="local", help="local, or a cluster's HOST:PORT")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    built = arches.ensure_model(arches.ARCHS[args.arch]())
    chosen = arches.ARCHS[args.arch]()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    results: dict[str, object] = {
        "arch": args.arch, "variant": args.variant, "images": args.images,
        "new_tokens": args.new_tokens, "cores": args.cores, "address": args.cluster,
        "cpu": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory(prefix="smolvlm-cluster-bench-") as scratch:
        for name, extra in (("local", ["--threads", str(args.cores)]),
                            ("cluster", ["--threads", "1", "--cluster", args.cluster])):
            folder = Path(scratch) / name
            make_photos(folder, args.images, chosen.tile)
            command = [sys.executable, "-m", "smolvlm_desktop", "caption", str(folder),
                       "--model", str(built.model_dir), "--variant", args.variant,
                       "--detail", str(chosen.tile), "--max-new-tokens", str(args.new_tokens),
                       "--write", "jsonl", "--no-library", "--json", *extra]
            results[name] = timed_run(command, env)
            print(f"{name:8s} {results[name]}", file=sys.stderr)
    local, cluster = results["local"], results["cluster"]
    assert isinstance(local, dict) and isinstance(cluster, dict)
    results["overhead_wall"] = round(cluster["wall_s"] / local["wall_s"] - 1, 3)
    if local["steady_images_per_s"] and cluster["steady_images_per_s"]:
        results["overhead_steady"] = round(local["steady_images_per_s"] / cluster["steady_images_per_s"] - 1, 3)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
