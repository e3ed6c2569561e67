"""What this CPU can do: its int8 and fp32 GEMM rates in ONNX Runtime, its features, and how
many operations each stage of the model performs (so a stage's time can be read as a share
of the machine's rate).

    python -m bench.kernels [--threads 2] [--repeats 7]

Why: a stage's milliseconds alone do not say whether it is slow. 1.4 s for an 878-token
prompt is fine on a CPU that does 150 GOP/s and poor on one that does 2,500. The rate is
measured here, in one process, with the three kernels the graphs can use for a matrix
product, interleaved so that a neighbour's load hits them alike:

* ``DynamicQuantizeMatMul`` (com.microsoft): fp32 activations quantised to uint8 per call,
  int8 weights; ONNX Runtime's QGEMM, which has AVX-512 VNNI, AVX-VNNI and AMX kernels. This
  is "the machine's int8 GEMM rate" the bench reports shares of;
* ``MatMulNBits`` 8-bit, block 64, accuracy level 4: 8-bit block-wise weights, as the
  exporter's int8 decoder holds them;
* fp32 ``MatMul``.

The shape is the decoder's widest prompt matrix product: a 13-tile photo's prompt (878 tokens
on SmolVLM-256M) times the MLP's up projection (576 x 1536 on 256M). Weights are random: the
kernels' speed does not depend on the values.

Operations counted (``decoder_prompt_ops``, ``vision_tile_ops``), a multiply-add being 2:

* decoder prompt of T tokens, L layers, hidden H, intermediate I, q heads nh, kv heads nkv,
  head size hd, vocabulary V:
  ``2*T*L*(H*hd*(2*nh + 2*nkv) + 3*H*I)`` (q, k, v, o and the three MLP matrices)
  ``+ 2*L*nh*hd*T*(T+1)`` (causal attention: QK^T and PV over the T*(T+1)/2 pairs)
  ``+ 2*H*V`` (the LM head, for the last position only);
* vision, one tile of P = (image_size/patch)^2 patches, L layers, width D, intermediate I,
  pixel-shuffle factor s, text hidden Ht:
  ``2*P*3*patch^2*D`` (patch embedding) ``+ 2*P*L*(4*D^2 + 2*D*I)`` (q, k, v, o, MLP)
  ``+ 4*L*P^2*D`` (full attention: QK^T and PV) ``+ 2*P*D*Ht`` (the connector's projection
  of the P/s^2 shuffled rows of D*s^2).

On SmolVLM-256M that is about 213 GOP for an 878-token prompt and 215 GOP per 512-px tile.
Norms, activations, softmax and rotary are left out (well under 1% of the operations).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `smolvlm_desktop` importable
    sys.path.insert(0, str(REPO))

# The decoder prompt of a 13-tile photo on SmolVLM-256M/500M (same vision, same tokenizer):
# 13 x 64 image tokens + the chat template and the question around them.
PROMPT_ROWS = 878
BLOCK = 64  # MatMulNBits block, as the exporter picks for 256M's 576 (export/quantize.py)
INNER = 5  # kernel calls per timed sample: one int8 call is ~1-3 ms, too short to time alone
# Features that decide which int8/bf16 kernels ONNX Runtime (MLAS) can use on this CPU.
X86_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "avx_vnni_int8", "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = ("asimddp", "i8mm", "bf16", "sve", "sve2", "sme")
KERNEL_LABELS = {"int8": "int8 DynamicQuantizeMatMul (QGEMM)",
                 "int8_blocks": "int8 MatMulNBits (8-bit, block 64)",
                 "fp32": "fp32 MatMul"}


# --- the CPU ------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    """CPU name and the features that matter for int8/bf16 kernels, from wherever the OS says:
    /proc/cpuinfo (Linux), lscpu, sysctl (macOS), else platform (Windows: name only)."""
    for source in (_from_proc_cpuinfo, _from_lscpu, _from_sysctl):
        found = source()
        if found:
            return found
    return {"model": platform.processor() or platform.machine() or "unknown", "features": {},
            "source": "platform (features unknown)"}


def _interesting(flags: set[str], arm: bool | None = None) -> dict[str, bool]:
    if arm is None:
        arm = platform.machine().lower() in ("arm64", "aarch64")
    return {name: name in flags for name in (ARM_FEATURES if arm else X86_FEATURES)}


def _from_proc_cpuinfo() -> dict[str, Any] | None:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def parse_cpuinfo(text: str) -> dict[str, Any] | None:
    """Name and features from /proc/cpuinfo's text: x86 lists "flags", ARM "Features"."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    arm = "features" in fields and "flags" not in fields
    flags = set((fields.get("features") if arm else fields.get("flags", "")).split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
    if not model and not flags:
        return None
    detail = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields)
    return {"model": model or platform.processor() or platform.machine() or "unknown", "detail": detail,
            "features": _interesting(flags, arm), "source": "/proc/cpuinfo"}


def _from_lscpu() -> dict[str, Any] | None:
    out = _command(["lscpu"])
    if not out:
        return None
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    return {"model": fields.get("model name", "unknown"), "features": _interesting(set(fields.get("flags", "").split())),
            "source": "lscpu"}


def _from_sysctl() -> dict[str, Any] | None:
    if sys.platform != "darwin":
        return None
    model = _command(["sysctl", "-n", "machdep.cpu.brand_string"]).strip()
    optional = _command(["sysctl", "hw.optional"])
    on = {m.group(1).lower() for m in re.finditer(r"hw\.optional\.(?:arm\.)?(?:FEAT_)?(\w+): 1", optional)}
    aliases = {"dotprod": "asimddp", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16"}
    return {"model": model or "unknown", "features": _interesting({aliases.get(f, f) for f in on}),
            "source": "sysctl"}


def _command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def describe_cpu(info: Mapping[str, Any]) -> str:
    """One line: name, and which of the kernel-deciding features it has and lacks."""
    features = info.get("features") or {}
    has = [f for f, on in features.items() if on]
    lacks = [f for f, on in features.items() if not on]
    detail = f" ({info['detail']})" if info.get("detail") else ""
    if not features:
        return f"{info['model']}{detail}; features unknown ({info.get('source')})"
    return f"{info['model']}{detail}; has {' '.join(has) or 'none of them'}; lacks {' '.join(lacks) or 'none'}"


# --- the kernels --------------------------------------------------------------------------
def gemm_shape(text_config: Mapping[str, Any]) -> tuple[int, int, int]:
    """M x K x N: the 13-tile prompt times the decoder's MLP up projection."""
    return PROMPT_ROWS, int(text_config["hidden_size"]), int(text_config["intermediate_size"])


def _graph(kind: str, m: int, k: int, n: int, rng: np.random.Generator) -> bytes:
    """A one-node ONNX model computing [m, k] @ [k, n] with `kind`'s kernel, serialised."""
    from onnx import TensorProto, helper, numpy_helper

    inits = []
    if kind == "fp32":
        inits = [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32) * 0.05, "B")]
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    elif kind == "int8":
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "B"),
                 numpy_helper.from_array(np.full((n,), 0.01, np.float32), "scale"),
                 numpy_helper.from_array(np.zeros((n,), np.int8), "zero")]
        node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "scale", "zero"], ["Y"], domain="com.microsoft")
    elif kind == "int8_blocks":
        blocks = -(-k // BLOCK)
        inits = [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, BLOCK), dtype=np.uint8), "B"),
                 numpy_helper.from_array(np.full((n * blocks,), 0.01, np.float32), "scale")]
        node = helper.make_node("MatMulNBits", ["A", "B", "scale"], ["Y"], domain="com.microsoft",
                                K=k, N=n, bits=8, block_size=BLOCK, accuracy_level=4)
    else:
        raise ValueError(kind)
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_rates(m: int, k: int, n: int, threads: int, repeats: int = 7) -> dict[str, Any]:
    """GOP/s of each kernel on [m, k] @ [k, n], same process, interleaved, the engine's
    session options (engine/runtime.py); medians of `repeats` samples of INNER calls."""
    from smolvlm_desktop.engine.runtime import ort, session_options  # first: it turns ORT's telemetry off

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    runs: dict[str, Callable[[], Any]] = {}
    for kind in KERNEL_LABELS:
        session = ort.InferenceSession(_graph(kind, m, k, n, rng), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        runs[kind] = lambda s=session: s.run(None, {"A": a})
    for run in runs.values():  # warm-up: first calls pack weights and size the arena
        run(), run()
    samples: dict[str, list[float]] = {kind: [] for kind in runs}
    for _ in range(repeats):
        for kind, run in runs.items():
            t0 = time.perf_counter()
            for _ in range(INNER):
                run()
            samples[kind].append((time.perf_counter() - t0) * 1000 / INNER)
    ops = 2.0 * m * k * n
    ms = {kind: statistics.median(s) for kind, s in samples.items()}
    return {"shape": [m, k, n], "threads": threads, "repeats": repeats,
            "ms": {kind: round(v, 4) for kind, v in ms.items()},
            "gops": {kind: round(ops / (v / 1000) / 1e9, 1) for kind, v in ms.items()},
            "int8_gops": round(ops / (ms["int8"] / 1000) / 1e9, 1)}


# --- what each stage does -----------------------------------------------------------------
def decoder_prompt_ops(text: Mapping[str, Any], tokens: int) -> float:
    """Operations of one decoder pass over a `tokens`-long prompt (see the module docstring)."""
    h, layers, inter = int(text["hidden_size"]), int(text["num_hidden_layers"]), int(text["intermediate_size"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or h // heads)
    linear = h * head_dim * (2 * heads + 2 * kv_heads) + 3 * h * inter
    attention = 2.0 * layers * heads * head_dim * tokens * (tokens + 1)
    return 2.0 * tokens * layers * linear + attention + 2.0 * h * int(text["vocab_size"])


def vision_tile_ops(vision: Mapping[str, Any], text_hidden: int) -> float:
    """Operations of one vision pass over one tile, connector included (module docstring)."""
    d, layers, inter = int(vision["hidden_size"]), int(vision["num_hidden_layers"]), int(vision["intermediate_size"])
    patch = int(vision["patch_size"])
    patches = (int(vision["image_size"]) // patch) ** 2
    embedding = 2.0 * patches * 3 * patch * patch * d
    linear = 2.0 * patches * layers * (4 * d * d + 2 * d * inter)
    attention = 4.0 * layers * patches * patches * d
    return embedding + linear + attention + 2.0 * patches * d * text_hidden


def model_ops(config: Mapping[str, Any]) -> tuple[Callable[[int], float], float]:
    """(prompt ops as a function of its length, ops per vision tile) for an Idefics3 config."""
    text = config["text_config"]
    return (lambda tokens: decoder_prompt_ops(text, tokens)), vision_tile_ops(config["vision_config"],
                                                                                int(text["hidden_size"]))


# --- the command --------------------------------------------------------------------------
def measure(text_config: Mapping[str, Any], threads: int, repeats: int) -> dict[str, Any]:
    """CPU description and kernel rates, as `bench` puts them at the top of its report."""
    return {"cpu": cpu_info(), "gemm": gemm_rates(*gemm_shape(text_config), threads, repeats)}


def format_kernels(kernels: Mapping[str, Any]) -> str:
    gemm = kernels["gemm"]
    m, k, n = gemm["shape"]
    rates = ", ".join(f"{KERNEL_LABELS[kind]} {gops:,.0f} GOP/s" for kind, gops in gemm["gops"].items())
    return (f"CPU: {describe_cpu(kernels['cpu'])}\n"
            f"GEMM {m}x{k}x{n}, {gemm['threads']} threads, ONNX Runtime, same process: {rates}")


def main(argv: list[str] | None = None) -> int:
    from bench.arch import smolvlm_256m

    p = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    args = p.parse_args(argv)
    kernels = measure(smolvlm_256m().config["text_config"], args.threads, args.repeats)
    print(json.dumps(kernels, indent=2) if args.json else format_kernels(kernels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
