"""Overhead of `caption --cluster` against a local batch on the same cores.

    .venv/bin/python bench/cluster.py [--arch 256m|tiny] [--images 40] [--new-tokens 32]
                                      [--cores 2] [--rounds 3] [--modes local,address,...]
                                      [--json out.json]

Captions the same N one-tile JPEG photos (512 px: one vision pass) with the real command,
each run in a fresh folder and process, with --write jsonl --no-library, in these ways:

* local: one process, --threads CORES (the batch decodes groups of images together);
* address: --cluster HOST:PORT of a cluster already running (the realistic case: a cluster
  is started once and serves many jobs), CORES CPUs on this machine, --threads 1, so that
  Ray runs CORES actors of one thread each;
* address-1xN: the same cluster with --threads CORES: one actor using the cores exactly as
  the local run does;
* local-cluster: --cluster local --threads 1, where the command starts (and stops) a
  private Ray cluster of this machine's cores itself, as on one big machine.

The cluster for "address" is a one-node loopback cluster started here with `ray start`
(tests/ray_cluster.py); the first job a new cluster runs also starts Ray Data's own helper
actors, so one unmeasured job goes first (its time is reported as `first_job_on_cluster`),
as does one unmeasured local run (the page cache). Then the modes run interleaved, in an
order rotated each round, so that the machine's load (shared, noisy) falls on all alike.

For each run: wall time of the whole command, time to the first answer (start-up: imports,
model loads, for a cluster Ray itself, and the first group's decoding) and the steady rate
from the first answer to the last; the CPU time the run cost (the command and everything it
started, and for "address" what the cluster's processes spent meanwhile: a measure the
machine's other load does not stretch as it does wall time), and of that the command's own
process (for a cluster: the driver); the 1-minute load average just before it. Reported: per mode the medians, and the overheads against local as the median
over rounds of (mode / local in the same round) - 1, for wall and CPU time. The model files
are the same for all (bench/arch.py: the 256m architecture with random weights; "tiny" is
the bundled demo model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

import arch as arches  # noqa: E402 - bench/ is not a package on the path
from child import bench_image  # noqa: E402
from kernels import cpu_info  # noqa: E402
from ray_cluster import MARKER, LoopbackCluster, ray_env  # noqa: E402 - loopback only

MODES = ("local", "address", "address-1xN", "local-cluster")


def make_photos(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        bench_image(size, seed=i).save(folder / f"photo{i:03d}.jpg", quality=90)


class CpuWatch(threading.Thread):
    """CPU seconds (user + system) a run costs: the command's own process and every process
    with `marker` (NAME=value) in its environment (a cluster's daemons and workers, which
    are not the command's children, and whose command lines Ray rewrites), sampled every
    0.1 s from /proc, each one's last value kept; a process that ends between two samples
    loses at most that much. What a process that was already running had spent before the
    first sample is not counted."""

    def __init__(self, pid: int, marker: str | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.marker = pid, marker.encode() if marker else None
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.done = threading.Event()
        self.sample(baseline=True)

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.sample()

    def sample(self, baseline: bool = False) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                if pid != self.pid and not (
                        self.marker and self.marker in (entry / "environ").read_bytes().split(b"\0")):
                    continue
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            if baseline:
                self.first[pid] = seconds
            self.last[pid] = seconds

    def stop(self) -> tuple[float, float]:
        """The CPU seconds of all, and of the command's own process alone."""
        self.done.set()
        self.join()
        spent = {pid: value - self.first.get(pid, 0.0) for pid, value in self.last.items()}
        return sum(spent.values()), spent.get(self.pid, 0.0)


def timed_run(command: list[str], env: dict[str, str], marker: str | None
              ) -> dict[str, float | None]:
    """Wall time, time to the first --json answer, the steady rate after it, CPU time."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    arrivals = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=REPO) as child:
        assert child.stdout is not None and child.stderr is not None
        watch = CpuWatch(child.pid, marker)
        watch.start()
        for line in child.stdout:
            if json.loads(line).get("ok"):
                arrivals.append(time.perf_counter() - start)
        stderr = child.stderr.read()
        watch.sample()  # the command's last value, before it is reaped
        if child.wait() != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    wall = time.perf_counter() - start
    cpu, command_cpu = watch.stop()
    steady = arrivals[-1] - arrivals[0]
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "command_cpu_s": round(command_cpu, 2),
            "first_answer_s": round(arrivals[0], 2),
            "images": len(arrivals), "load_before": round(load, 2),
            "steady_images_per_s": round((len(arrivals) - 1) / steady, 3) if steady > 0 else None}


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(arches.ARCHS), default="256m")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES) or ({"local"} - set(modes)):
        parser.error(f"modes must be among {', '.join(MODES)} and include local (got {unknown})")

    built = arches.ensure_model(arches.ARCHS[args.arch]())
    chosen = arches.ARCHS[args.arch]()
    env = ray_env()  # usage statistics off, loopback addresses kept, this run's token
    extra = {"local": ["--threads", str(args.cores)],
             "address": ["--threads", "1"], "address-1xN": ["--threads", str(args.cores)],
             "local-cluster": ["--threads", "1", "--cluster", "local"]}
    cluster = LoopbackCluster(workers=0, cpus=args.cores) if {"address", "address-1xN"} & set(modes) else None
    results: dict[str, object] = {
        "arch": args.arch, "variant": args.variant, "images": args.images,
        "new_tokens": args.new_tokens, "cores": args.cores, "rounds": args.rounds,
        "cpu": cpu_info()["model"], "cpus": os.cpu_count()}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        if cluster is not None:
            for mode in ("address", "address-1xN"):
                extra[mode] += ["--cluster", cluster.address]
        with tempfile.TemporaryDirectory(prefix="smolvlm-cluster-bench-") as scratch:
            count = 0

            def run(mode: str) -> dict:
                nonlocal count
                count += 1
                folder = Path(scratch) / f"{count:03d}-{mode}"
                make_photos(folder, args.images, chosen.tile)
                command = [sys.executable, "-m", "smolvlm_desktop", "caption", str(folder),
                           "--model", str(built.model_dir), "--variant", args.variant,
                           "--detail", str(chosen.tile), "--max-new-tokens", str(args.new_tokens),
                           "--write", "jsonl", "--no-library", "--json", *extra[mode]]
                if mode == "local-cluster":  # its own Ray temp dir, to find its processes by
                    ray_tmp = tempfile.mkdtemp(prefix="smr", dir="/tmp")  # short: socket paths
                    try:
                        return timed_run(command, {**env, "RAY_TMPDIR": ray_tmp}, f"RAY_TMPDIR={ray_tmp}")
                    finally:
                        shutil.rmtree(ray_tmp, ignore_errors=True)
                marker = (f"{MARKER}={cluster.temp_dir}" if cluster is not None and mode.startswith("address")
                          else None)
                return timed_run(command, env, marker)

            run("local")  # warm-up: the page cache
            if cluster is not None:
                results["first_job_on_cluster"] = run("address")
                print(f"first job on the new cluster {results['first_job_on_cluster']}", file=sys.stderr)
            for round_ in range(args.rounds):
                order = modes[round_ % len(modes):] + modes[:round_ % len(modes)]
                for mode in order:
                    runs[mode].append(run(mode))
                    print(f"round {round_ + 1} {mode:14s} {runs[mode][-1]}", file=sys.stderr)
    finally:
        if cluster is not None:
            cluster.stop()
    results["runs"] = runs
    summary = {}
    for mode in modes:
        summary[mode] = {key: median_of(runs[mode], key) for key in
                         ("wall_s", "cpu_s", "command_cpu_s", "first_answer_s", "steady_images_per_s",
                          "load_before")}
        if mode != "local":
            for key in ("wall", "cpu"):
                ratios = [r[f"{key}_s"] / l[f"{key}_s"] for r, l in zip(runs[mode], runs["local"])]
                summary[mode][f"overhead_{key}"] = round(statistics.median(ratios) - 1, 3)
    results["median"] = summary
    print(json.dumps(summary, indent=2))
    print(f"cpu: {results['cpu']}, {results['cpus']} CPUs; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
