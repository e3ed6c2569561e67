"""FastVLM-0.5B against SmolVLM-256M (and 500M) on a 2048x1536 photo, each at its own detail.

    # once, in an environment with timm (scripts/fastvlm_reference.sh makes one):
    .venv-fastvlm/bin/python -m bench.fastvlm build
    # then, in the app's environment (the SmolVLM models are built by bench/arch.py if missing):
    .venv/bin/python -m bench.fastvlm run [--models fastvlm,256m,500m] [--repeats 3] [--json OUT]

`build` makes a random-weight FastVLM at FastVLM-0.5B's real sizes (transformers' FastVlmConfig:
Qwen2-0.5B and the full FastViTHD; export/tiny_fastvlm.py) and writes it with the project's
exporter (export/fastvlm.py: decoder and embedding op by op, vision traced; each checked
against transformers; fp32 + int8), cached like bench/arch.py's models.

`run` measures each model's int8 files in a process of its own (peak RSS is per process), as
the app runs them (VisionLanguageModel, 2 threads), on the same 2048x1536 photo at each
model's own detail: SmolVLM at 2048 px (4x3 tiles of 512 and the whole image: 13 vision
passes), FastVLM at its one 1024-px pass. Per model: time to first token and end to end with
48 new tokens (medians after a warm-up), split into reading the image, the prompt and
decoding; peak RSS. In the same run it measures the CPU's int8 GEMM rate (ONNX Runtime's
DynamicQuantizeMatMul and MatMulNBits, 8-bit), its fp32 MatMul rate and the memory
bandwidth, and prints what share of them the vision pass and decoding reach: the vision
pass's operations (2 x multiply-adds of its Conv and MatMul nodes, counted from the graph)
per second over the int8 GEMM rate, and decoding's bytes (the int8 decoder's weights, read
once a token) per second over the bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import smolvlm_desktop  # noqa: E402,F401 - before onnxruntime: it switches ONNX Runtime's telemetry off
from bench.arch import cache_root, exporter_digest, log  # noqa: E402
from bench.child import timed  # noqa: E402
from bench.kernels import cpu_info  # noqa: E402

PHOTO = (2048, 1536)
NEW_TOKENS = 48
QUESTION = "Describe this image."
RESULT_MARKER = "FASTVLM-BENCH "
BUILD_RECIPE = 1
SEED = 500_000_001
# Random weights that neither explode nor forget the picture (export/tiny_fastvlm.py's
# build_model says why): the tiny's gain 1.5 and layer scale 0.2 made 24 layers and 44 blocks
# chaotic (image features ~1e9; int8 vs fp32 top-1 0.62 from the amplified rounding).
GAIN, LAYER_SCALE, BIAS = 1.0, 0.02, 0.0


# --- build (torch + timm) ------------------------------------------------------------------------
def fastvlm_folder(cache: Path | None = None) -> Path:
    """Where the full-size random FastVLM lives, named after what decides its contents."""
    import hashlib

    from smolvlm_desktop.export.tiny_fastvlm import fastvlm_05b_config

    blob = json.dumps({"config": fastvlm_05b_config(), "seed": SEED, "gain": GAIN, "layer_scale": LAYER_SCALE,
                       "bias": BIAS, "recipe": BUILD_RECIPE, "exporter": exporter_digest()}, sort_keys=True)
    return (cache or cache_root()) / f"fastvlm-0.5b-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def build(cache: Path | None = None) -> Path:
    """The random-weight FastVLM-0.5B, built once: its model folder."""
    import shutil

    import torch

    from smolvlm_desktop.export import tiny_fastvlm as tf

    folder = fastvlm_folder(cache)
    if (folder / "complete").is_file():
        return folder / "model"
    staging = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"building the random-weight FastVLM-0.5B in {folder} (once; a few minutes)")
    tok = tf.build_tokenizer(first_special=tf.QWEN2_FIRST_SPECIAL)
    model = tf.build_model(tf.fastvlm_05b_config(tok.token_to_id("<image>")), SEED, LAYER_SCALE, GAIN, BIAS)
    stops = [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")]
    with torch.no_grad():  # tied head: a stop token's logit is exactly 0, never the best of 152k
        model.get_input_embeddings().weight[stops] = 0.0
    log(f"model made ({time.perf_counter() - t0:.0f} s, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters); exporting fp32 + int8")
    diffs = tf.build_folder(staging / "model", model, tok, crop=1024)
    (staging / "complete").write_text(json.dumps({"max_diff_vs_transformers": diffs}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    log(f"FastVLM-0.5B ready ({time.perf_counter() - t0:.0f} s; fp32 vs transformers: {diffs})")
    return folder / "model"


# --- measuring one model (a process of its own) -------------------------------------------------
def photo() -> Any:
    """The 2048x1536 photo every model reads (bench/child.py's gradient and noise, 4:3)."""
    from bench.child import bench_image

    return bench_image(PHOTO[0]).resize(PHOTO)


def measure_model(model_dir: Path, threads: int, repeats: int, new_tokens: int) -> dict[str, Any]:
    """One model's int8 files as the app runs them: a warm-up, then `repeats` captions of the
    photo at the model's own detail, each reading the photo again (feature cache cleared)."""
    from bench.child import peak_rss_mb
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    model = VisionLanguageModel.load(model_dir, variant="int8", provider="cpu", threads=threads)
    messages = [Message("user", QUESTION, images=(photo(),))]
    settings = GenerationSettings(max_new_tokens=new_tokens)  # detail None: the model's own
    runs = []
    for rep in range(repeats + 1):
        model.features.clear()
        t0 = time.perf_counter()
        result = model.generate(messages, settings)
        total_ms = (time.perf_counter() - t0) * 1000
        if rep:  # the first is a warm-up
            t = result.timings
            runs.append({"first_token_ms": t.first_token_ms, "end_to_end_ms": total_ms, "image_ms": t.image_ms,
                         "prefill_ms": t.prefill_ms, "decode_ms_per_token": t.decode_ms / max(t.new_tokens - 1, 1),
                         "new_tokens": t.new_tokens, "prompt_tokens": t.prompt_tokens, "vision_passes": t.tiles_read})
    info = {"family": model.files.family.name, "detail": model.files.image_processor.longest_edge,
            "decoder_in_place": type(model.new_decoder_state()).__name__ == "InPlaceDecoderState"}
    model.close()
    return {"runs": runs, "info": info, "peak_rss_mb": peak_rss_mb()}


def fidelity(model_dir: Path, threads: int, new_tokens: int = 16) -> dict[str, float]:
    """int8 against fp32 under teacher forcing (as tests/test_engine_reference.py judges the tiny
    models): fp32's greedy continuation of two questions about the photo, then both variants'
    logits at each of its positions; top-1 agreement and mean cosine."""
    import numpy as np

    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    fp32 = VisionLanguageModel.load(model_dir, variant="fp32", provider="cpu", threads=threads)
    int8 = VisionLanguageModel.load(model_dir, variant="int8", provider="cpu", threads=threads)
    agree, cosines = [], []
    for question in (QUESTION, "What is written in it?"):
        messages = [Message("user", question, images=(photo(),))]
        continuation = fp32.generate(messages, GenerationSettings(max_new_tokens=new_tokens)).token_ids
        a = fp32.teacher_forced_logits(messages, continuation)
        b = int8.teacher_forced_logits(messages, continuation)
        agree.extend(np.argmax(a, -1) == np.argmax(b, -1))
        cosines.extend((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
    return {"top1_agreement": float(np.mean(agree)), "mean_cosine": float(np.mean(cosines)), "positions": len(agree)}


def interleave(dirs: dict[str, Path], threads: int, repeats: int, new_tokens: int) -> dict[str, dict[str, float]]:
    """The models in one process, one caption each in turn, `repeats` rounds after a warm-up
    round: on a shared machine, whose load drifts over minutes, the fairest comparison of their
    times (peak RSS is `run`'s, a process per model). Medians per model."""
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    models = {name: VisionLanguageModel.load(folder, variant="int8", provider="cpu", threads=threads)
              for name, folder in dirs.items()}
    messages = [Message("user", QUESTION, images=(photo(),))]
    settings = GenerationSettings(max_new_tokens=new_tokens)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for rep in range(repeats + 1):
        for name, model in models.items():
            model.features.clear()
            t0 = time.perf_counter()
            t = model.generate(messages, settings).timings
            if rep:
                total_s = time.perf_counter() - t0
                samples[name].append({"first_token_s": t.first_token_ms / 1000, "end_to_end_s": total_s,
                                      "image_s": t.image_ms / 1000, "prefill_s": t.prefill_ms / 1000,
                                      "decode_ms_per_token": t.decode_ms / max(t.new_tokens - 1, 1)})
    for model in models.values():
        model.close()
    return {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]} for name, runs in samples.items()}


# --- the machine's rates (same run) -------------------------------------------------------------
def _session(model: Any, threads: int, optimise: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _best_ms(fn: Any, repeats: int = 7) -> float:
    """Median of `repeats` timed calls after two warm-ups, in ms."""
    return statistics.median(timed(fn, repeats, warmup=2))


def kernel_rates(threads: int, m: int = 1024, k: int = 768, n: int = 2304) -> dict[str, float]:
    """GOP/s of one [m, k] x [k, n] product (a FastViTHD stage-4 q/k/v) in the kernels the int8
    graphs use, fp32 MatMul and a 1x1 Conv of the same size; and the read bandwidth (GB/s) of a
    ReduceSum over 1 GiB with the same threads (what decoding a token does to the weights)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from smolvlm_desktop.export.quantize import _blockwise_int8

    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def model(nodes: list[Any], inits: list[Any], inputs: list[Any] = [x]) -> Any:  # noqa: B006
        graph = helper.make_graph(nodes, "rate", inputs, [y], initializer=inits)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets)

    scale = np.abs(w).max() / 127
    wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    packed, scales = _blockwise_int8(w, 128)
    graphs = {
        "int8 DynamicQuantizeMatMul": model(
            [helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws", "wz"], ["y"], domain="com.microsoft")],
            [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.array(scale, np.float32), "ws"),
             numpy_helper.from_array(np.array(0, np.int8), "wz")]),
        "int8 MatMulNBits (8-bit, block 128, accuracy 4)": model(
            [helper.make_node("MatMulNBits", ["x", "wp", "sc"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                              block_size=128, accuracy_level=4)],
            [numpy_helper.from_array(packed, "wp"), numpy_helper.from_array(scales, "sc")]),
        "fp32 MatMul": model([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")]),
    }
    rates = {}
    for name, graph in graphs.items():
        sess = _session(graph, threads)
        rates[name] = 2 * m * k * n / _best_ms(lambda: sess.run(None, {"x": a})) / 1e6
    side = int(m ** 0.5)
    pixels = np.ascontiguousarray(a.reshape(side, side, k).transpose(2, 0, 1)[None])
    conv = model([helper.make_node("Conv", ["p", "cw"], ["y"])],
                 [numpy_helper.from_array(np.ascontiguousarray(w.T.reshape(n, k, 1, 1)), "cw")],
                 [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, k, side, side])])
    sess = _session(conv, threads)
    rates["fp32 Conv 1x1"] = 2 * m * k * n / _best_ms(lambda: sess.run(None, {"p": pixels})) / 1e6
    big = np.ones(2**28, np.float32)  # 1 GiB
    reduce = model([helper.make_node("ReduceSum", ["b"], ["y"], keepdims=0)], [],
                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2**28])])
    sess = _session(reduce, threads, optimise=False)
    rates["memory read GB/s"] = big.nbytes / _best_ms(lambda: sess.run(None, {"b": big}), 5) / 1e6
    return rates


# --- what a pass computes and reads -------------------------------------------------------------
def vision_gop(path: Path, shapes: dict[str, list[int]], threads: int = 2) -> float:
    """Giga-operations (2 x multiply-adds) of the Conv and MatMul nodes of one run of the fp32
    graph at `path` with inputs of `shapes`. Shapes come from ONNX shape inference; those it
    cannot tell (a hand-written graph's data-dependent reshapes) from running the graph once
    with them exposed."""
    import numpy as np
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path))
    for graph_input in model.graph.input:
        for dim, value in zip(graph_input.type.tensor_type.shape.dim, shapes.get(graph_input.name, [])):
            dim.ClearField("dim_param")
            dim.dim_value = value
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    seen: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for info in inferred.graph.value_info:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        if dims and None not in dims:
            seen[info.name] = tuple(dims)
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul")]
    missing = sorted({name for n in nodes for name in (n.input[0], n.output[0]) if name not in seen})
    if missing:
        model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                  for name in missing)
        sess = _session(model, threads, optimise=False)
        feeds = {}
        for i in sess.get_inputs():
            dtype = {"tensor(float)": np.float32, "tensor(bool)": bool, "tensor(int64)": np.int64}[i.type]
            feeds[i.name] = np.ones(shapes[i.name], dtype=dtype)
        seen.update(zip(missing, (np.shape(v) for v in sess.run(missing, feeds))))
    macs = 0
    for n in nodes:
        out = int(np.prod(seen[n.output[0]]))
        if n.op_type == "Conv":  # out elements x (in channels / group) x kernel area
            macs += out * int(np.prod(seen[n.input[1]][1:]))
        else:
            macs += out * int(seen[n.input[0]][-1])
    return 2 * macs / 1e9


def decoder_bytes_per_token(path: Path) -> int:
    """Bytes of the int8 decoder's weights a decoding step reads: every initializer but the
    RoPE tables, of which a step reads one row."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    rope = {name for n in model.graph.node if n.op_type == "RotaryEmbedding" for name in n.input[2:4]}
    return sum(len(t.raw_data) for t in model.graph.initializer if t.name not in rope)


# --- the run ------------------------------------------------------------------------------------
def run_child(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "bench.fastvlm", "child", "--model-dir", str(model_dir),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--new-tokens", str(args.new_tokens)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench: measuring {model_dir} failed (exit status {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def model_dirs(names: list[str], cache: Path | None) -> dict[str, Path]:
    """Each model's folder: FastVLM from `build` (refused here if missing: it needs timm), the
    SmolVLMs from bench/arch.py (built on first use, with torch)."""
    from bench.arch import ARCHS, ensure_model

    dirs = {}
    for name in names:
        if name == "fastvlm":
            folder = fastvlm_folder(cache)
            if not (folder / "complete").is_file():
                raise SystemExit("bench: no FastVLM-0.5B built yet: run `python -m bench.fastvlm build` in an "
                                 "environment with timm first (scripts/fastvlm_reference.sh makes one)")
            dirs["FastVLM-0.5B"] = folder / "model"
        else:
            dirs[f"SmolVLM-{name.upper()}"] = ensure_model(ARCHS[name](), cache).model_dir
    return dirs


def summarise(name: str, model_dir: Path, result: dict[str, Any], rates: dict[str, float]) -> dict[str, Any]:
    runs = result["runs"]
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key.endswith("ms") or
           key.endswith("token")}
    first = runs[0]
    shape = ({"pixel_values": [1, 3, result["info"]["detail"], result["info"]["detail"]]}
             if result["info"]["family"] == "FastVLM" else None)
    gop = vision_gop(model_dir / "onnx" / "vision_encoder.onnx", shape) if shape else smolvlm_vision_gop(model_dir)
    gop *= first["vision_passes"] if shape is None else 1
    vision_s = med["image_ms"] / 1000
    decode_bytes = decoder_bytes_per_token(model_dir / "onnx" / "decoder_model_merged_int8.onnx")
    int8_rate = rates["int8 DynamicQuantizeMatMul"]
    decode_gb_per_s = decode_bytes / (med["decode_ms_per_token"] / 1000) / 1e9
    return {
        "model": name, "detail": result["info"]["detail"], "vision_passes": first["vision_passes"],
        "prompt_tokens": first["prompt_tokens"], "new_tokens": first["new_tokens"],
        "first_token_ms": med["first_token_ms"], "end_to_end_ms": med["end_to_end_ms"],
        "image_ms": med["image_ms"], "prefill_ms": med["prefill_ms"], "decode_ms_per_token": med["decode_ms_per_token"],
        "vision_gop": gop, "vision_gop_per_s": gop / vision_s, "vision_share_of_int8_gemm": gop / vision_s / int8_rate,
        "decoder_int8_mb": decode_bytes / 1e6, "decode_gb_per_s": decode_gb_per_s,
        "decode_share_of_bandwidth": decode_gb_per_s / rates["memory read GB/s"],
        "peak_rss_mb": round(result["peak_rss_mb"] or 0), "decoder_in_place": result["info"]["decoder_in_place"],
        "first_token_ms_all": [round(r["first_token_ms"]) for r in runs],
    }


def smolvlm_vision_gop(model_dir: Path) -> float:
    """One 512-px tile's operations in SmolVLM's vision graph."""
    tile = 512
    return vision_gop(model_dir / "onnx" / "vision_encoder.onnx",
                      {"pixel_values": [1, 1, 3, tile, tile], "pixel_attention_mask": [1, 1, tile, tile]})


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nA {PHOTO[0]}x{PHOTO[1]} photo at each model's own detail, int8, {report['threads']} threads, "
          f"{report['new_tokens']} new tokens; median of {report['repeats']} after a warm-up")
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs; load average before {m['load_before']}, after {m['load_after']}")
    rows = report["models"]
    table = [("", *(r["model"] for r in rows)),
             ("vision passes (detail)", *(f"{r['vision_passes']} ({r['detail']} px)" for r in rows)),
             ("prompt tokens", *(str(r["prompt_tokens"]) for r in rows)),
             ("time to first token", *(f"{r['first_token_ms'] / 1000:.2f} s" for r in rows)),
             ("  reading the image", *(f"{r['image_ms'] / 1000:.2f} s" for r in rows)),
             ("  reading the prompt", *(f"{r['prefill_ms'] / 1000:.2f} s" for r in rows)),
             (f"end to end, {report['new_tokens']} tokens", *(f"{r['end_to_end_ms'] / 1000:.2f} s" for r in rows)),
             ("decode, per token", *(f"{r['decode_ms_per_token']:.1f} ms" for r in rows)),
             ("vision operations", *(f"{r['vision_gop']:.0f} GOP" for r in rows)),
             ("vision rate / int8 GEMM rate",
              *(f"{r['vision_gop_per_s']:.0f} GOP/s = {100 * r['vision_share_of_int8_gemm']:.0f}%" for r in rows)),
             ("decoder weights read per token", *(f"{r['decoder_int8_mb']:.0f} MB" for r in rows)),
             ("decode bytes / bandwidth",
              *(f"{r['decode_gb_per_s']:.1f} GB/s = {100 * r['decode_share_of_bandwidth']:.0f}%" for r in rows)),
             ("peak RSS", *(f"{r['peak_rss_mb']} MB" for r in rows))]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print("vision rate: the vision pass's operations per second of reading the image (preprocessing "
          "included), over the int8 DynamicQuantizeMatMul rate below; decode bytes: the int8 decoder's "
          "weights (all but the RoPE tables) read once a token, over the memory read rate below")
    print("rates measured in this run: " + ", ".join(
        f"{k} {v:.0f} GOP/s" if "GB/s" not in k else f"{k.replace(' GB/s', '')} {v:.1f} GB/s"
        for k, v in report["rates"].items()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run import load_average

    dirs = ({name: Path(folder) for name, folder in (item.split("=", 1) for item in args.folders)}
            if args.folders else model_dirs(args.models, args.cache))
    report: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "new_tokens": args.new_tokens,
                              "machine": {"cpu": cpu_info()["model"], "cpus": os.cpu_count(),
                                          "load_before": load_average()}}
    results = {}
    for name, folder in dirs.items():
        log(f"measuring {name} ({args.repeats} captions after a warm-up)")
        results[name] = run_child(folder, args)
    log("measuring the kernel rates and memory bandwidth")
    report["rates"] = kernel_rates(args.threads)
    report["models"] = [summarise(name, dirs[name], results[name], report["rates"]) for name in dirs]
    report["machine"]["load_after"] = load_average()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fastvlm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the random-weight FastVLM-0.5B (needs torch, timm)")
    r = sub.add_parser("run", help="measure FastVLM-0.5B and SmolVLM side by side")
    c = sub.add_parser("child", help=argparse.SUPPRESS)
    i = sub.add_parser("interleave", help="the models' times, caption by caption in turn, in one process")
    i.add_argument("--models", default="fastvlm,256m,500m")
    i.add_argument("--cache", type=Path)
    i.add_argument("--threads", type=int, default=2)
    i.add_argument("--repeats", type=int, default=3)
    i.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    f = sub.add_parser("fidelity", help="int8 vs fp32 of one model folder, teacher-forced")
    f.add_argument("model_dir", type=Path)
    f.add_argument("--threads", type=int, default=2)
    for q in (b, r):
        q.add_argument("--cache", type=Path, help="where built models are kept (as bench/run.py's --cache)")
    r.add_argument("--models", default="fastvlm,256m", help="comma-separated: fastvlm, 256m, 500m")
    r.add_argument("--folders", default="", help="NAME=DIR,...: measure these model folders instead of --models")
    r.add_argument("--json", type=Path)
    for q in (r, c):
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--repeats", type=int, default=3)
        q.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    c.add_argument("--model-dir", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "build":
        print(build(args.cache))
    elif args.command == "interleave":
        from bench.run import load_average

        before = load_average()
        dirs = model_dirs([m.strip() for m in args.models.split(",") if m.strip()], args.cache)
        medians = interleave(dirs, args.threads, args.repeats, args.new_tokens)
        print(f"{cpu_info()['model']}, {os.cpu_count()} CPUs, {args.threads} threads; load average before {before}, "
              f"after {load_average()}; medians of {args.repeats} rounds, the models in turn")
        for name, m in medians.items():
            print(f"{name:<14} first token {m['first_token_s']:.2f} s (image {m['image_s']:.2f} s, prompt "
                  f"{m['prefill_s']:.2f} s), end to end {m['end_to_end_s']:.2f} s, "
                  f"decode {m['decode_ms_per_token']:.1f} ms/token")
    elif args.command == "fidelity":
        print(json.dumps(fidelity(args.model_dir, args.threads)))
    elif args.command == "child":
        print(RESULT_MARKER + json.dumps(measure_model(args.model_dir, args.threads, args.repeats, args.new_tokens)),
              flush=True)
    else:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        args.folders = [f.strip() for f in args.folders.split(",") if f.strip()]
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
