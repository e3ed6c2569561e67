"""Benchmark: int8 ONNX and fp32 ONNX (this app's engine) against transformers fp32, same weights.

    .venv/bin/python bench/run.py [--threads 2] [--repeats 5 | --quick] [--only int8,fp32,torch]
                                  [--json out.json] [--arch 256m|500m|tiny] [--no-ort-cache]
                                  [--batch-images 8]
    smolvlm-desktop bench [the same options]

Builds (once, cached outside the repo: see bench/arch.py) a random-weight model with the real
SmolVLM-256M architecture, exported by the project's exporter, then measures each
configuration in its own process (bench/child.py) with the same number of threads:

* vision: one 512-px image (1 tile, 1 encoder pass) and one 1024-px image (2x2 tiles + the
  global image = 5 passes), the vision graph / ``get_image_features`` only;
* prefill: embedding + image splice + one decoder pass over the ~80-token prompt;
* decode: ms per token over 32 greedy steps with the KV cache;
* end to end: a 512-px PIL image to 32 new tokens, preprocessing included;
* conversation: a chat about a 13-tile photo (4x3 tiles and the whole, as a 2048x1536 photo
  on SmolVLM-256M), time to first token: the first question cold, the first question after
  the photo was read ahead, a follow-up, Regenerate, and the follow-up with nothing kept;
  transformers' cold first question in the same run;
* batch: N one-tile JPEG photos (--batch-images, default 8) captioned one at a time (load +
  generate) and then as one batch (BatchRunner), per image; and the ratio of the two rates;
* cold start: process start -> imports -> sessions/model loaded -> first token (a fresh
  process; the model files are in the OS file cache after the first run, as on a user's
  second launch). The ONNX configurations load through the optimised-graph cache the app
  keeps (``<cache>/ort-cache``; ``--no-ort-cache`` to load without it);
* peak RSS: after that first caption, and over the whole run.

Times are medians of --repeats runs after a warm-up. Absolute numbers drift on a shared
machine, so the table's point is the ratio to transformers fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `bench` and `smolvlm_desktop` importable
    sys.path.insert(0, str(REPO))

from bench.arch import ARCHS, Arch, BuiltModel, cache_root, ensure_model, log  # noqa: E402
from bench.child import CONFIGS, RESULT_MARKER  # noqa: E402

LABELS = {"int8": "int8 ONNX", "fp32": "fp32 ONNX", "torch": "transformers fp32"}
REFERENCE = "torch"
QUICK_REPEATS = 2
LLAMA_CPP = {
    "note": "measured elsewhere, not in this run",
    "setup": "llama.cpp Q8_0, 2 threads, same machine type",
    "vision_ms_per_tile": 950,
    "decode_ms_per_token": 7.7,
    "one_vision_pass_plus_32_tokens_s": 1.5,
    "peak_rss_mb": "590-640",
}


class BenchError(RuntimeError):
    """A configuration could not be measured; the message says which and why."""


@dataclass(frozen=True)
class Stage:
    """One row of the table: how to read its value out of a child's result."""

    key: str
    label: str
    unit: str  # "ms", "s" or "MB"
    value: Callable[[dict[str, Any]], float | None]


def _median_of(stage: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: float(statistics.median(r["stages_ms"][stage])) if r["stages_ms"].get(stage) else None


def stages(arch: Arch, prompt_tokens: int | str, new_tokens: int, batch_images: int | str = "N") -> list[Stage]:
    tile = arch.tile
    return [
        Stage("vision_1", f"vision, 1 tile ({tile}-px image)", "ms", _median_of("vision_1")),
        Stage("vision_5", f"vision, 5 tiles ({2 * tile}-px image)", "ms", _median_of("vision_5")),
        Stage("prefill", f"prefill ({prompt_tokens}-token prompt)", "ms", _median_of("prefill")),
        Stage("decode_per_token", f"decode, per token ({new_tokens} greedy)", "ms",
              _median_of("decode_per_token")),
        Stage("end_to_end", f"end to end, {tile}-px image + {new_tokens} tokens", "ms",
              _median_of("end_to_end")),
        Stage("single_captions_per_image", f"{batch_images} one-tile photos, captioned singly, per image", "ms",
              _median_of("single_captions_per_image")),
        Stage("batch_per_image", f"the same {batch_images} photos as one batch, per image", "ms",
              _median_of("batch_per_image")),
        Stage("conversation_cold", f"chat, 13-tile photo: first question, first token ({4 * tile}-px detail)", "ms",
              _median_of("conversation_cold")),
        Stage("conversation_read_ahead", "chat: first question after the photo was read ahead", "ms",
              _median_of("conversation_read_ahead")),
        Stage("conversation_follow_up", "chat: follow-up question, first token", "ms",
              _median_of("conversation_follow_up")),
        Stage("conversation_regenerate", "chat: Regenerate, first token", "ms",
              _median_of("conversation_regenerate")),
        Stage("conversation_follow_up_uncached", "chat: the follow-up with nothing kept, first token", "ms",
              _median_of("conversation_follow_up_uncached")),
        Stage("cold_first_token", "cold start to first token (new process)", "s",
              lambda r: r["cold"].get("first_token_s")),
        Stage("peak_rss_caption", "peak RSS, load + one caption", "MB",
              lambda r: r["peak_rss_mb"].get("one_caption")),
        Stage("peak_rss_run", "peak RSS, whole benchmark process", "MB",
              lambda r: r["peak_rss_mb"].get("whole_run")),
    ]


# --- running the children ---------------------------------------------------------------
def run_child(config: str, arch: Arch, built: BuiltModel, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one configuration in a fresh process; return its parsed result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "bench.child", "--config", config, "--model-dir", str(built.model_dir),
           "--tile", str(arch.tile), "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--new-tokens", str(args.new_tokens), "--batch-images", str(args.batch_images)]
    if config == "torch" and built.checkpoint is not None:
        cmd += ["--checkpoint", str(built.checkpoint)]
    if config != "torch" and args.ort_cache:
        # In the benchmark's own cache, as the app keeps it in the user's cache folder (never
        # beside the model: the tiny one lives inside the package).
        # One folder per built model (their model folders are all called "model").
        ort_cache = (args.cache or cache_root()) / "ort-cache" / f"{built.model_dir.parent.name}-{built.model_dir.name}"
        cmd += ["--ort-cache", str(ort_cache)]
    log(f"measuring {LABELS[config]} ({args.repeats} repeats, {args.threads} threads)")
    proc = subprocess.run([*cmd, "--spawned-at", repr(time.time())], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{LABELS[config]} failed (exit status {proc.returncode}); see the messages above")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def summarise(arch: Arch, results: dict[str, dict[str, Any]], new_tokens: int) -> list[dict[str, Any]]:
    """Per stage: the value of each configuration and its ratio to transformers fp32."""
    prompt_tokens = next((r["info"].get("prompt_tokens") for r in results.values()), "?")
    batch_images = next((r["info"]["batch_images"] for r in results.values() if "batch_images" in r["info"]), "N")
    rows = []
    for stage in stages(arch, prompt_tokens, new_tokens, batch_images):
        values = {c: stage.value(r) for c, r in results.items()}
        ref = values.get(REFERENCE)
        ratios = {c: (v / ref if v is not None and ref else None) for c, v in values.items() if c != REFERENCE}
        rows.append({"key": stage.key, "label": stage.label, "unit": stage.unit,
                     "values": values, "ratio_vs_torch": ratios})
    return rows


# --- printing ---------------------------------------------------------------------------
def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} ms"


def fmt_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def format_table(rows: list[dict[str, Any]], configs: list[str]) -> str:
    ratio_cols = [c for c in configs if c != REFERENCE] if REFERENCE in configs else []
    header = ["stage", *(LABELS[c] for c in configs), *(f"{c}/torch" for c in ratio_cols)]
    body = [[r["label"], *(fmt_value(r["values"][c], r["unit"]) for c in configs),
             *(fmt_ratio(r["ratio_vs_torch"][c]) for c in ratio_cols)] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(b) for b in body), rule])


def print_report(report: dict[str, Any]) -> None:
    configs = list(report["results"])
    m = report["machine"]
    print(f"\nSmolVLM {report['arch']} architecture, random weights; {report['threads']} threads; "
          f"median of {report['repeats']} after a warm-up")
    print(f"machine: {m['cpus']} CPUs, {m['platform']}; load average before {m['load_before']}, "
          f"after {m['load_after']}")
    print(format_table(report["table"], configs))
    if REFERENCE in configs:
        print("ratio = value / transformers fp32 measured in this run: below 1.00x is faster or smaller")
    caches = {LABELS[c]: r["info"].get("ort_cache") for c, r in report["results"].items()
              if r["info"].get("ort_cache") not in (None, "off")}
    if caches:
        print("optimised-graph cache at load: " + ", ".join(f"{k} {v}" for k, v in caches.items())
              + " (\"made\": this cold start includes writing it; the app's second launch reuses it)")
    for config, result in report["results"].items():
        made = result["info"].get("new_tokens")
        if made != report["new_tokens"]:
            print(f"warning: {LABELS[config]} stopped after {made} of {report['new_tokens']} tokens")
    for config, result in report["results"].items():
        info = result["info"]
        if "conversation_tiles" in info:
            print(f"chat, {LABELS[config]}: {info['conversation_tiles']} tiles, a "
                  f"{info['conversation_prompt_tokens']}-token first prompt; the follow-up read "
                  f"{info['conversation_follow_up_tokens_read']} tokens; the kept cache held "
                  f"{info['conversation_cache_mb']} MB")
    for row in batch_rates(report["table"]):
        print(f"batch rate, {row['config']}: {row['ratio']:.2f}x the images per second of single captions "
              "(same run, same photos)")
    ref = LLAMA_CPP
    print(f"reference, {ref['note']}: {ref['setup']}: ≈{ref['vision_ms_per_tile']} ms per tile, "
          f"{ref['decode_ms_per_token']} ms/token decode, ≈{ref['one_vision_pass_plus_32_tokens_s']} s "
          f"for one vision pass + 32 tokens, {ref['peak_rss_mb']} MB peak RSS")


def batch_rates(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ONNX configuration: single-caption time per image / batch time per image."""
    rows = {r["key"]: r["values"] for r in table}
    single, batch = rows.get("single_captions_per_image", {}), rows.get("batch_per_image", {})
    return [{"config": LABELS[c], "ratio": single[c] / batch[c]} for c in single
            if single.get(c) and batch.get(c)]


# --- main -------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"cpus": os.cpu_count(), "platform": platform.platform(terse=True),
            "python": platform.python_version(), "onnxruntime": version("onnxruntime"),
            "torch": version("torch"), "transformers": version("transformers"),
            "load_before": load_average()}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="smolvlm-desktop bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for every configuration (default 2)")
    p.add_argument("--repeats", type=int, help="timed runs per stage, median reported (default 5)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} repeats unless --repeats is given")
    p.add_argument("--only", default=",".join(CONFIGS),
                   help="comma-separated subset of int8,fp32,torch (ratios need torch)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--arch", choices=sorted(ARCHS), default="256m",
                   help="256m: the real SmolVLM-256M architecture (default); 500m: SmolVLM-500M's; "
                        "tiny: the bundled demo model")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    p.add_argument("--cache", type=Path, help="where built models are kept "
                   "(default $SMOLVLM_BENCH_CACHE or ~/.cache/smolvlm-desktop-bench)")
    p.add_argument("--batch-images", type=int, default=8,
                   help="photos for the batch-vs-single-captions rows (default 8; 0 skips them)")
    p.add_argument("--no-ort-cache", dest="ort_cache", action="store_false",
                   help="load the ONNX graphs without the optimised-graph cache the app uses")
    args = p.parse_args(argv)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in args.only if c not in CONFIGS]
    if unknown or not args.only:
        p.error(f"--only takes a comma-separated subset of {','.join(CONFIGS)}; got {unknown or 'nothing'}")
    args.only = [c for c in CONFIGS if c in args.only]  # fixed column order
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else 5
    if args.repeats < 1 or args.threads < 1 or args.new_tokens < 2:
        p.error("--repeats and --threads must be at least 1, --new-tokens at least 2")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build if needed, measure every configuration, return the report (also printed)."""
    arch = ARCHS[args.arch]()
    built = ensure_model(arch, args.cache)
    machine = machine_info()
    results = {config: run_child(config, arch, built, args) for config in args.only}
    machine["load_after"] = load_average()
    report = {"arch": arch.name, "model_dir": str(built.model_dir), "threads": args.threads,
              "repeats": args.repeats, "new_tokens": args.new_tokens, "machine": machine,
              "results": results, "table": summarise(arch, results, args.new_tokens),
              "llama_cpp_reference": LLAMA_CPP}
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # bad usage (2) or --help (0): a status, as the CLI expects
        return int(exc.code or 0)
    try:
        run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
