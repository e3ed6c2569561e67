"""Benchmark: int8 ONNX and fp32 ONNX (this app's engine) against transformers fp32, same weights.

    .venv/bin/python bench/run.py [--threads 2] [--repeats 5 | --quick] [--only int8,fp32,torch]
                                  [--json out.json] [--arch 256m|500m|tiny] [--no-ort-cache]
                                  [--batch-images 8] [--no-photos] [--photo-repeats 2]
                                  [--photo-tokens 48] [--photo-batch 4]
    smolvlm-desktop bench [the same options]

Builds (once, cached outside the repo: see bench/arch.py) a random-weight model with the real
SmolVLM-256M architecture, exported by the project's exporter. First, in this process, it
names the CPU and the features that decide ONNX Runtime's int8/bf16 kernels, and measures the
machine's int8 and fp32 GEMM rates (bench/kernels.py). Then it measures each configuration in
its own process (bench/child.py) with the same number of threads:

* vision: one 512-px image (1 tile, 1 encoder pass) and one 1024-px image (2x2 tiles + the
  global image = 5 passes), the vision graph / ``get_image_features`` only;
* prefill: embedding + image splice + one decoder pass over the ~80-token prompt;
* decode: ms per token over 32 greedy steps with the KV cache;
* end to end: a 512-px PIL image to 32 new tokens, preprocessing included;
* photos, at the model's own detail: a 13-tile (2048x1536 on SmolVLM-256M: 4x3 tiles + the
  whole image) and a 17-tile photo (2048x2048: 4x4 + 1): reading it (preprocessing + vision)
  per tile, prefill, time to the first token, end to end with 48 new tokens; 13-tile photos
  per hour one at a time (from end to end) and as the app's batch (--photo-batch different
  JPEGs through BatchRunner; transformers: one at a time, it has no batch runner). Small
  repeats: --photo-repeats for ONNX (default 2), one run for transformers, whose 13-tile
  first token alone takes 15-40 s on 2 cores; --no-photos skips these rows;
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

After the table, each stage's operations (bench/kernels.py counts them from the
architecture) over its time, as GOP/s and as a share of the machine's int8 GEMM rate: how far
that stage is from what this CPU does with int8.

Every timed caption reads its image afresh, as a new photo does. Times are medians of
--repeats runs after a warm-up. Absolute numbers drift on a shared machine, so the table's
point is the ratio to transformers fp32 measured in the same run.
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

from bench import kernels  # noqa: E402
from bench.arch import ARCHS, Arch, BuiltModel, cache_root, ensure_model, log, smolvlm_256m  # noqa: E402
from bench.child import CONFIGS, PHOTOS, RESULT_MARKER  # noqa: E402

LABELS = {"int8": "int8 ONNX", "fp32": "fp32 ONNX", "torch": "transformers fp32"}
REFERENCE = "torch"
QUICK_REPEATS = 2
QUICK_PHOTO_REPEATS, QUICK_PHOTO_BATCH, QUICK_KERNEL_REPEATS = 1, 2, 3
KERNEL_REPEATS = 9
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
    unit: str  # "ms", "s", "MB" or "img/h"
    value: Callable[[dict[str, Any]], float | None]


def _median_of(stage: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: float(statistics.median(r["stages_ms"][stage])) if r["stages_ms"].get(stage) else None


def _per_hour(stage: str) -> Callable[[dict[str, Any]], float | None]:
    """Images per hour from a stage's median milliseconds per image."""
    return lambda r: 3_600_000 / m if (m := _median_of(stage)(r)) else None


def _photo_batch_per_hour(result: dict[str, Any]) -> float | None:
    """The app's batch of photos; transformers, which has no batch runner: one at a time."""
    if result["stages_ms"].get("photo_batch_per_image"):
        return _per_hour("photo_batch_per_image")(result)
    return _per_hour("photo13_end_to_end")(result) if result["config"] == REFERENCE else None


def photo_stages(photo_info: dict[str, Any]) -> list[Stage]:
    """The rows of the 13- and 17-tile photos (labels with the counts the runs reported)."""
    rows = []
    for key in PHOTOS:
        name = f"{photo_info.get(f'{key}_tiles', '?')}-tile photo"
        size = "x".join(map(str, photo_info.get("photo_size", {}).get(key, ["?"])))
        rows += [
            Stage(f"{key}_read_per_tile", f"{name} ({size}): reading it, per tile", "ms",
                  _median_of(f"{key}_read_per_tile")),
            Stage(f"{key}_prefill", f"{name}: prefill ({photo_info.get(f'{key}_prompt_tokens', '?')}-token prompt)",
                  "ms", _median_of(f"{key}_prefill")),
            Stage(f"{key}_first_token", f"{name}: first token", "s", _seconds(f"{key}_first_token")),
            Stage(f"{key}_end_to_end", f"{name}: end to end, {photo_info.get('photo_new_tokens', '?')} tokens",
                  "s", _seconds(f"{key}_end_to_end")),
        ]
    batch = photo_info.get("photo_batch_images", "N")
    return rows + [
        Stage("photo13_singles_per_hour", "13-tile photos per hour, one at a time", "img/h",
              _per_hour("photo13_end_to_end")),
        Stage("photo13_batch_per_hour", f"13-tile photos per hour, batch of {batch} (transformers: one at a time)",
              "img/h", _photo_batch_per_hour),
    ]


def _seconds(stage: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: m / 1000 if (m := _median_of(stage)(r)) is not None else None


def stages(arch: Arch, prompt_tokens: int | str, new_tokens: int, batch_images: int | str = "N",
           photo_info: dict[str, Any] | None = None) -> list[Stage]:
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
        *(photo_stages(photo_info) if photo_info is not None else []),
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
def child_command(config: str, arch: Arch, built: BuiltModel, args: argparse.Namespace) -> list[str]:
    """The command line of the process that measures `config` (without --spawned-at)."""
    cmd = [sys.executable, "-m", "bench.child", "--config", config, "--model-dir", str(built.model_dir),
           "--tile", str(arch.tile), "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--new-tokens", str(args.new_tokens), "--batch-images", str(args.batch_images),
           "--photos" if args.photos else "--no-photos", "--photo-repeats", str(args.photo_repeats),
           "--photo-tokens", str(args.photo_tokens), "--photo-batch", str(args.photo_batch),
           "--gemm-shape", ",".join(map(str, gemm_shape(arch))), "--kernel-repeats", str(args.kernel_repeats)]
    if config == "torch" and built.checkpoint is not None:
        cmd += ["--checkpoint", str(built.checkpoint)]
    if config != "torch" and args.ort_cache:
        # In the benchmark's own cache, as the app keeps it in the user's cache folder (never
        # beside the model: the tiny one lives inside the package).
        # One folder per built model (their model folders are all called "model").
        ort_cache = (args.cache or cache_root()) / "ort-cache" / f"{built.model_dir.parent.name}-{built.model_dir.name}"
        cmd += ["--ort-cache", str(ort_cache)]
    return cmd


def full_size_text(arch: Arch) -> dict[str, Any]:
    """The text config whose prompt GEMM gives the machine's rate: the tiny model's 8 x 32
    matrices say nothing about the machine, so it takes 256M's."""
    return (arch if arch.name != "tiny" else smolvlm_256m()).config["text_config"]


def gemm_shape(arch: Arch) -> tuple[int, int, int]:
    return kernels.gemm_shape(full_size_text(arch))


def run_child(config: str, arch: Arch, built: BuiltModel, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one configuration in a fresh process; return its parsed result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = child_command(config, arch, built, args)
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
    photo_info = photo_facts(results)
    rows = []
    for stage in stages(arch, prompt_tokens, new_tokens, batch_images, photo_info):
        values = {c: stage.value(r) for c, r in results.items()}
        ref = values.get(REFERENCE)
        ratios = {c: (v / ref if v is not None and ref else None) for c, v in values.items() if c != REFERENCE}
        rows.append({"key": stage.key, "label": stage.label, "unit": stage.unit,
                     "values": values, "ratio_vs_torch": ratios})
    return rows


def photo_facts(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the photo rows measured (tiles, prompt lengths, sizes), from the first config that
    has them, the ONNX ones first (they also know the batch); None when none ran them."""
    infos = [r["info"] for r in results.values() if "photo13_tiles" in r["info"]]
    if not infos:
        return None
    facts = dict(infos[-1])
    facts.update(infos[0])
    return facts


# Stages read as "operations / time / the machine's int8 GEMM rate": (key, what it is, which count).
SHARE_STAGES = (("vision_1", "vision, one tile", "tile"),
                ("photo13_read_per_tile", "13-tile photo: reading, per tile", "tile"),
                ("photo17_read_per_tile", "17-tile photo: reading, per tile", "tile"),
                ("prefill", "prefill, {tile}-px image prompt", "prompt_tokens"),
                ("photo13_prefill", "13-tile photo: prefill", "photo13_prompt_tokens"),
                ("photo17_prefill", "17-tile photo: prefill", "photo17_prompt_tokens"))


def int8_rates(results: dict[str, dict[str, Any]], fallback: float) -> dict[str, float]:
    """Per configuration: the int8 GEMM rate its own process measured (the mean of before and
    after its stages), else the one measured at the top."""
    return {c: statistics.fmean(r["info"]["gemm_int8_gops"]) if r["info"].get("gemm_int8_gops") else fallback
            for c, r in results.items()}


def stage_shares(arch: Arch, table: list[dict[str, Any]], results: dict[str, dict[str, Any]],
                 int8_gops: float) -> list[dict[str, Any]]:
    """Per stage and configuration: GOP/s achieved (operations counted by bench/kernels.py
    from the architecture) and that as a share of the machine's int8 GEMM rate, as measured
    in that configuration's process (int8_rates)."""
    prompt_ops, tile_ops = kernels.model_ops(arch.config)
    rates = int8_rates(results, int8_gops)
    info = next(iter(results.values()))["info"] if results else {}
    rows = {r["key"]: r for r in table}
    shares = []
    for key, label, count in SHARE_STAGES:
        if key not in rows or (count != "tile" and count not in info):
            continue
        ops = tile_ops if count == "tile" else prompt_ops(int(info[count]))
        gops = {c: (ops / (ms / 1000) / 1e9 if ms else None)
                for c, ms in ((c, _ms(v, rows[key]["unit"])) for c, v in rows[key]["values"].items())}
        suffix = "" if count == "tile" else f" ({info[count]} tokens)"
        shares.append({"key": key, "label": label.format(tile=arch.tile) + suffix, "gop": ops / 1e9, "gops": gops,
                       "share_of_int8": {c: (g / rates[c] if g is not None and rates.get(c) else None)
                                         for c, g in gops.items()}})
    return shares


def _ms(value: float | None, unit: str) -> float | None:
    return None if value is None else value * 1000 if unit == "s" else value


# --- printing ---------------------------------------------------------------------------
def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "img/h":
        return f"{value:,.0f}/h"
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
    if report.get("kernels"):
        print(kernels.format_kernels(report["kernels"]))
    print(format_table(report["table"], configs))
    if REFERENCE in configs:
        print("ratio = value / transformers fp32 measured in this run: below 1.00x is faster or smaller "
              "(/h rows: above 1.00x is more)")
    if report.get("shares"):
        print(format_shares(report["shares"], configs, report["results"], report["kernels"]["gemm"]["int8_gops"]))
    photos = photo_facts(report["results"])
    if photos:
        runs = report.get("photo_repeats", "?")
        print(f"photo rows: at the model's own detail ({photos['photo_detail']} px); median of {runs} ONNX "
              f"run{'' if runs == 1 else 's'} after a warm-up, 1 transformers run (no warm-up: 15-40 s a "
              "13-tile first token); reading = preprocessing + vision; first token counted from the call")
        for row in photo_batch_gains(report["table"]):
            print(f"photo batch, {row['config']}: {row['ratio']:.2f}x the 13-tile photos per hour of one at a time")
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


def format_shares(shares: list[dict[str, Any]], configs: list[str], results: dict[str, dict[str, Any]],
                  int8_gops: float) -> str:
    """The stage rates as a small table: GOP/s and the share of the int8 GEMM rate."""
    header = ["share of the int8 GEMM rate", "GOP", *(LABELS[c] for c in configs)]

    def cell(share: dict[str, Any], config: str) -> str:
        gops, part = share["gops"].get(config), share["share_of_int8"].get(config)
        return "n/a" if gops is None else f"{gops:,.0f} GOP/s {part:.0%}"

    body = [[s["label"], f"{s['gop']:.3g}", *(cell(s, c) for c in configs)] for s in shares]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    measured = ", ".join(f"{LABELS[c]} {' / '.join(f'{g:,.0f}' for g in results[c]['info'].get('gemm_int8_gops', []))}"
                         for c in configs if results[c]["info"].get("gemm_int8_gops"))
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:],
                      "operations counted from the architecture (bench/kernels.py): matrix products "
                      "and attention; GOP/s = operations / the stage's time; share = that / the int8 "
                      "GEMM rate its own process measured, the mean of before and after its stages"
                      + (f" (GOP/s: {measured}; at the top {int8_gops:,.0f})" if measured else "")])


def photo_batch_gains(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ONNX configuration: 13-tile photos per hour as a batch / one at a time."""
    rows = {r["key"]: r["values"] for r in table}
    single, batch = rows.get("photo13_singles_per_hour", {}), rows.get("photo13_batch_per_hour", {})
    return [{"config": LABELS[c], "ratio": batch[c] / single[c]} for c in single
            if c != REFERENCE and single.get(c) and batch.get(c)]


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
    p.add_argument("--photos", action=argparse.BooleanOptionalAction, default=True,
                   help="the 13- and 17-tile photo rows at the model's own detail (default on; "
                        "slow: transformers takes 15-40 s for a 13-tile first token on 2 cores)")
    p.add_argument("--photo-repeats", type=int,
                   help=f"ONNX runs per photo row (default 2, {QUICK_PHOTO_REPEATS} with --quick); transformers: 1")
    p.add_argument("--photo-tokens", type=int, default=48, help="new tokens per photo caption (default 48)")
    p.add_argument("--photo-batch", type=int,
                   help=f"13-tile photos in the batch row (default 4, {QUICK_PHOTO_BATCH} with --quick; 0 skips it)")
    args = p.parse_args(argv)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in args.only if c not in CONFIGS]
    if unknown or not args.only:
        p.error(f"--only takes a comma-separated subset of {','.join(CONFIGS)}; got {unknown or 'nothing'}")
    args.only = [c for c in CONFIGS if c in args.only]  # fixed column order
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else 5
    if args.photo_repeats is None:
        args.photo_repeats = QUICK_PHOTO_REPEATS if args.quick else 2
    if args.photo_batch is None:
        args.photo_batch = QUICK_PHOTO_BATCH if args.quick else 4
    args.kernel_repeats = QUICK_KERNEL_REPEATS if args.quick else KERNEL_REPEATS
    if args.repeats < 1 or args.threads < 1 or args.new_tokens < 2 or args.photo_repeats < 1:
        p.error("--repeats, --photo-repeats and --threads must be at least 1, --new-tokens at least 2")
    if args.photo_tokens < 2 or args.photo_batch < 0:
        p.error("--photo-tokens must be at least 2, --photo-batch at least 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build if needed, measure every configuration, return the report (also printed)."""
    arch = ARCHS[args.arch]()
    built = ensure_model(arch, args.cache)
    machine = machine_info()
    log("the CPU's int8 and fp32 GEMM rates (ONNX Runtime, this process)")
    measured = kernels.measure(full_size_text(arch), args.threads, args.kernel_repeats)
    for line in kernels.format_kernels(measured).splitlines():
        log(line)
    results = {config: run_child(config, arch, built, args) for config in args.only}
    machine["load_after"] = load_average()
    table = summarise(arch, results, args.new_tokens)
    report = {"arch": arch.name, "model_dir": str(built.model_dir), "threads": args.threads,
              "repeats": args.repeats, "photo_repeats": args.photo_repeats, "new_tokens": args.new_tokens,
              "machine": machine, "kernels": measured, "results": results, "table": table,
              "shares": stage_shares(arch, table, results, measured["gemm"]["int8_gops"]),
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
