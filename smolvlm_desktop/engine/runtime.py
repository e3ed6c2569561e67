"""ONNX Runtime sessions: which execution provider runs each graph, with a visible fall-back.

A GPU provider (DirectML on Windows, CoreML on macOS, CUDA) is tried first when the user asks
for it (or for "auto"); when a session cannot be created on it, that one graph falls back to the
CPU and the reason is kept, so that the window can say "vision: CPU (DirectML failed: …)"
instead of silently being slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnxruntime as ort

from .types import EngineError, ModelFolderError

# The package's __init__ has set ORT_DISABLE_TELEMETRY=1 before this import (the switch that
# works on Linux); this is the library's other switch, which governs its events on Windows.
ort.disable_telemetry_events()

PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
# "auto" tries these in order, skipping the ones this onnxruntime build does not have.
AUTO_ORDER = ("cuda", "dml", "coreml")
SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items()}
# How a person reads them, for the window's status bar.
PROVIDER_LABELS = {"cpu": "CPU", "dml": "DirectML", "coreml": "CoreML", "cuda": "CUDA"}

# The official graphs' input names (SMOLVLM_FORMAT.md); checked so that a mis-named or
# foreign graph is reported clearly instead of failing deep inside a run.
EXPECTED_INPUTS: dict[str, tuple[str, ...]] = {
    "vision_encoder": ("pixel_values", "pixel_attention_mask"),
    "embed_tokens": ("input_ids",),
    "decoder_model_merged": ("inputs_embeds", "attention_mask", "position_ids"),
    # Embedding models (docs/CLIP_FORMAT.md); their outputs differ by family (CLIP:
    # image_embeds / text_embeds, SigLIP: pooler_output), so engine/embeddings.py checks those.
    "vision_model": ("pixel_values",),
    "text_model": ("input_ids",),
}
EXPECTED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "vision_encoder": ("image_features",),
    "embed_tokens": ("inputs_embeds",),
    "decoder_model_merged": ("logits",),
}


class ProviderError(EngineError):
    """The requested execution provider is unknown."""


@dataclass
class GraphSession:
    """One loaded graph and the provider that actually runs it."""

    name: str
    path: Path
    session: ort.InferenceSession
    provider: str  # short name: cpu, dml, coreml, cuda
    fallback_reason: str | None = None
    input_names: tuple[str, ...] = field(default_factory=tuple)
    output_names: tuple[str, ...] = field(default_factory=tuple)
    optional_inputs: tuple[str, ...] = field(default_factory=tuple)  # inputs with a default value

    def run(self, feeds: dict[str, Any], run_options: ort.RunOptions | None = None,
            outputs: Sequence[str] | None = None) -> list[Any]:
        return self.session.run(list(outputs) if outputs else None, feeds, run_options)

    def run_bound(self, binding: Any, run_options: ort.RunOptions | None = None) -> None:
        """Run with inputs and outputs bound in place (an ort.IOBinding of this session)."""
        self.session.run_with_iobinding(binding, run_options)

    def input_type(self, name: str) -> str:
        for i in self.session.get_inputs():
            if i.name == name:
                return i.type
        raise KeyError(name)


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers (always includes cpu)."""
    names = [SHORT_NAMES[p] for p in ort.get_available_providers() if p in SHORT_NAMES]
    return names if "cpu" in names else names + ["cpu"]


def provider_order(requested: str) -> list[str]:
    """The providers to try, best first; the CPU is always the last resort."""
    requested = requested.lower()
    if requested != "auto" and requested not in PROVIDER_NAMES:
        raise ProviderError(
            f"unknown provider {requested!r}; choose auto, {', '.join(PROVIDER_NAMES)}"
        )
    have = available_providers()
    wanted = AUTO_ORDER if requested == "auto" else (requested,)
    order = [p for p in wanted if p in have and p != "cpu"]
    return order + ["cpu"]


def default_threads() -> int:
    """Physical cores are what matter for matmul-bound work; os.cpu_count() counts SMT threads."""
    count = os.cpu_count() or 1
    return max(1, count // 2) if count >= 8 else count


# How long an idle worker thread spins before it sleeps (see session_options).
SPIN_DURATION_US = 50


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT's warnings are not for end users
    # ORT's worker threads busy-wait for the next op. Spinning for ORT's default time steals
    # the cores from other programs (and from each other) on a busy machine; not spinning at
    # all makes every small op of a decode step pay a thread wake-up. A short spin keeps both:
    # measured A/B on the 256M int8 decoder, 2 threads, per step: idle machine 15.3 ms
    # (default) / 21.8 ms (no spin) / 15.2 ms (50 us); two other busy processes 38.2 / 33.6 /
    # 31.1 ms. The vision graph too: with ORT's default its threads were still spinning when
    # the prefill began, which took 117-121 ms right after a vision pass instead of 82-88
    # (256M int8, the engine's caption loop), while the vision pass itself did not change.
    opts.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_DURATION_US))
    return opts


def open_graph(name: str, path: Path, requested_provider: str = "auto",
               threads: int | None = None, cache_dir: Path | None = None,
               family: str = "SmolVLM", expected_inputs: tuple[str, ...] | None = None) -> GraphSession:
    """Create a session for one graph, trying providers in order and falling back to the CPU.

    `cache_dir` (chosen by the caller; the engine picks no place to write) keeps a copy of the
    graph as ONNX Runtime optimised it, so that the next start skips most of that work: the three
    int8 graphs of SmolVLM-256M took 2.2 s to load fresh and 0.7 s from the cache, measured.
    """
    if not path.is_file():
        raise ModelFolderError(f"missing graph file {path}")
    reasons: list[str] = []
    for short in provider_order(requested_provider):
        try:
            with warnings.catch_warnings():
                # ORT only *warns* when a provider is unusable and quietly runs on the CPU;
                # an error here lets us record why and say so.
                warnings.simplefilter("error")
                session = None
                if short == "cpu" and cache_dir is not None:
                    session = _cached_cpu_session(path, threads, Path(cache_dir))
                if session is None:
                    session = ort.InferenceSession(
                        str(path), sess_options=session_options(threads),
                        providers=[PROVIDER_NAMES[short]],
                    )
        except Exception as exc:  # noqa: BLE001 - ORT raises many types; each is reported
            reasons.append(f"{short}: {str(exc).splitlines()[0][:200]}")
            if short == "cpu":
                raise ModelFolderError(
                    f"cannot load {path.name}: {reasons[-1]}. The file may be damaged: "
                    "run `smolvlm-desktop models verify` or pull the model again."
                ) from exc
            continue
        actual = SHORT_NAMES.get(session.get_providers()[0], session.get_providers()[0])
        if actual != short:
            reasons.append(f"{short}: onnxruntime placed the graph on {actual}")
        graph = GraphSession(
            name=name, path=path, session=session, provider=actual,
            fallback_reason="; ".join(reasons) or None,
            input_names=tuple(i.name for i in session.get_inputs()),
            output_names=tuple(o.name for o in session.get_outputs()),
            optional_inputs=tuple(i.name for i in session.get_overridable_initializers()),
        )
        check_graph_names(graph, family, expected_inputs)
        return graph
    raise AssertionError("unreachable: the CPU is always tried last")


# --- the optimised-graph cache ----------------------------------------------------------
# Only CPU sessions are cached: GPU providers compile their own kernels at load and ORT cannot
# save those into a graph file. The cached graph is optimised to the "extended" level, which
# ORT documents as independent of the CPU it was made on; the hardware-specific last step
# ("all": memory layouts for this CPU's vector width) is redone at each load and is cheap.
CACHE_FORMAT = 1


def _cache_stamp(path: Path) -> dict[str, Any]:
    """What the cached copy was made from; any change means it must be made again."""
    st = path.stat()
    return {"format": CACHE_FORMAT, "source": str(path.resolve()), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "onnxruntime": ort.__version__,
            "machine": platform.machine()}


def _cache_entry(path: Path, cache_dir: Path) -> Path:
    """One folder per source graph file, so a changed model replaces its entry instead of piling up."""
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir / f"{path.stem}-{digest}"


def _cached_cpu_session(path: Path, threads: int | None, cache_dir: Path) -> ort.InferenceSession | None:
    """A CPU session from the cached optimised graph, making that copy first if needed.

    Returns None when the cache cannot be used (unwritable folder, disk full, damaged copy):
    the caller then loads the original graph as if there were no cache.
    """
    entry = _cache_entry(path, cache_dir)
    stamp = _cache_stamp(path)
    graph_file = entry / "graph.onnx"
    try:
        if json.loads((entry / "stamp.json").read_text(encoding="utf-8")) == stamp:
            return ort.InferenceSession(str(graph_file),
                                        sess_options=session_options(threads),
                                        providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - missing, stale or damaged: make it again below
        pass
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".making-", dir=cache_dir))
    except OSError:
        return None
    try:
        opts = session_options(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(work / "graph.onnx")
        # Weights go to a side file (a single protobuf cannot exceed 2 GB).
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                      "graph.onnx.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                      "1024")
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        (work / "stamp.json").write_text(json.dumps(stamp), encoding="utf-8")
        # Swap the finished copy in whole, so that another process never sees half a graph.
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(work, entry)
        return ort.InferenceSession(str(graph_file),
                                    sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the cache is only a shortcut; never fail a load over it
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_graph_names(graph: GraphSession, family: str = "SmolVLM",
                      expected_inputs: tuple[str, ...] | None = None) -> None:
    """Raise a ModelFolderError naming the file and the inputs it should have had
    (`expected_inputs`: the family's, where they differ from SmolVLM's)."""
    inputs = EXPECTED_INPUTS[graph.name] if expected_inputs is None else expected_inputs
    missing_in = [n for n in inputs if n not in graph.input_names]
    missing_out = [n for n in EXPECTED_OUTPUTS.get(graph.name, ()) if n not in graph.output_names]
    if graph.name == "decoder_model_merged" and not any(
        n.startswith("past_key_values.") for n in graph.input_names
    ):
        missing_in.append("past_key_values.{i}.key/value")
    if missing_in or missing_out:
        raise ModelFolderError(
            f"{graph.path.name} does not look like a {family} {graph.name} graph: expected inputs "
            f"{', '.join(inputs)}"
            f"{', past_key_values.{i}.key/value' if graph.name == 'decoder_model_merged' else ''}"
            f" and outputs {', '.join(EXPECTED_OUTPUTS.get(graph.name, ())) or 'any'}; found inputs "
            f"{', '.join(graph.input_names)} and outputs {', '.join(graph.output_names)}."
        )


def numpy_dtype(onnx_type: str) -> str:
    """'tensor(float16)' -> 'float16'."""
    mapping = {"tensor(float)": "float32", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(bool)": "bool", "tensor(int32)": "int32"}
    return mapping.get(onnx_type, "float32")
