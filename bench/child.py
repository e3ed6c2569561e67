"""Measure one configuration (int8 ONNX, fp32 ONNX or transformers fp32) in its own process.

    python -m bench.child --config int8 --model-dir DIR --tile 512 --threads 2 --repeats 5 \
        --spawned-at <time.time() of the parent just before it started this process>

Why a process per configuration: peak RSS (``ru_maxrss``) only grows, so two configurations
in one process would mix their peaks; and a fresh process is what "cold start" means.

The process first does what a user's first caption does (load, then one 512-px image + 32
tokens) and notes the wall-clock time of the first token and the peak RSS so far. Then it
times each stage separately, warm, several times; then the photo rows (a 13-tile and a
17-tile photo at the model's own detail, and a batch of such photos), then the conversation.
The last line of stdout is ``BENCH-RESULT {json}``; progress goes to stderr.

The ONNX side uses the engine itself (``VisionLanguageModel``): its vision step, and for the
prompt and the tokens its own ``generate`` with the ``Timings`` it reports, so that whatever
graphs and paths the engine takes for a prompt are what is measured. Every timed caption reads
its image afresh, as a new photo does (the engine keeps features by pixels, and the bench
shows it the same pixels again). The transformers side uses ``Idefics3ForConditionalGeneration``
the way its ``generate`` does (KV cache, logits of the last position only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from PIL import Image

QUESTION = "Describe this image."
RESULT_MARKER = "BENCH-RESULT "
CONFIGS = ("int8", "fp32", "torch")


def bench_image(size: int, seed: int = 7) -> Image.Image:
    """A deterministic size x size RGB image with structure (a gradient plus noise), built in
    16-bit so that a 2048-px photo costs the process 25 MB, not the 300 MB of int64 planes."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[0:size, 0:size]  # a column and a row: broadcast, never size x size
    base = np.empty((size, size, 3), np.int16)
    base[..., 0] = x * 255 // (size - 1)
    base[..., 1] = y * 255 // (size - 1)
    base[..., 2] = ((x + y) * 7) % 256
    base += rng.integers(0, 40, size=(size, size, 3), dtype=np.int16)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


# The photo rows: a 4:3 and a square photo whose long edge is the model's own detail (2048 px on
# SmolVLM-256M: 4x3 tiles + the whole image = 13 vision passes, 4x4 + 1 = 17), by row key.
PHOTOS = {"photo13": (4, 3), "photo17": (4, 4)}


def photo(longest: int, aspect: tuple[int, int], seed: int = 7) -> Image.Image:
    """A `longest`-px photo of the given width:height (the same pixels for every config)."""
    w, h = aspect
    return bench_image(longest, seed).resize((longest, longest * h // w))


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (None where it cannot be read).

    On Linux this is VmHWM: getrusage's ru_maxrss survives exec, so a child started by a
    parent that had just built the model (3.9 GB with torch) reported the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


class Runner(Protocol):
    """One configuration's way of running each stage; `prepare` is never timed."""

    own_detail: int  # the model's own detail: the longest edge its processor resizes to

    def prepare(self, image: Image.Image, detail: int) -> Any: ...
    def tiles(self, prepared: Any) -> int: ...
    def prompt_tokens(self, prepared: Any) -> int: ...
    def vision(self, prepared: Any) -> Any: ...
    def caption(self, image: Image.Image, detail: int | None, new_tokens: int,
                on_first_token: Callable[[], None] | None = None) -> int: ...


# --- ONNX (the engine) ------------------------------------------------------------------
@dataclass
class OnnxPrepared:
    pixel_values: np.ndarray
    pixel_attention_mask: np.ndarray
    ids: np.ndarray


class OnnxRunner:
    """The engine's sessions and decode loop, driven stage by stage."""

    def __init__(self, model_dir: Path, variant: str, threads: int, ort_cache: Path | None = None) -> None:
        from smolvlm_desktop.engine.model import VisionLanguageModel

        self.model = VisionLanguageModel.load(model_dir, variant=variant, provider="cpu", threads=threads,
                                              cache_dir=ort_cache)
        self.run_options = _run_options()
        self.own_detail = int(self.model.info.longest_edge)
        self.last_timings: Any = None  # the Timings of the last caption

    def _messages(self, image: Image.Image) -> list[Any]:
        from smolvlm_desktop.engine.types import Message

        return [Message("user", QUESTION, images=(image,))]

    def prepare(self, image: Image.Image, detail: int) -> OnnxPrepared:
        from smolvlm_desktop.engine.processor import preprocess

        processed = preprocess([image], self.model.files.image_processor, detail)
        ids = self.model.prompt.encode(self._messages(image), processed.grids)
        dtype = _input_dtype(self.model.graphs["vision_encoder"], "pixel_values")
        return OnnxPrepared(processed.pixel_values.astype(dtype, copy=False),
                            processed.pixel_attention_mask, ids)

    def tiles(self, prepared: OnnxPrepared) -> int:
        return int(prepared.pixel_values.shape[1])

    def prompt_tokens(self, prepared: OnnxPrepared) -> int:
        return int(prepared.ids.shape[0])

    def vision(self, prepared: OnnxPrepared) -> np.ndarray:
        """The engine's own vision step (how it splits the tiles into graph calls included)."""
        return self.model._vision(prepared.pixel_values, prepared.pixel_attention_mask, self.run_options)

    def caption(self, image: Image.Image, detail: int | None, new_tokens: int,
                on_first_token: Callable[[], None] | None = None) -> int:
        """What the app does for one caption of a new photo: model.stream from a PIL image,
        greedy. The features kept from an earlier caption of the same pixels are dropped
        first, so that every caption reads its image (detail None: the model's own)."""
        from smolvlm_desktop.engine.types import GenerationSettings

        self.model.features.clear()
        settings = GenerationSettings(max_new_tokens=new_tokens, detail=detail)
        generation = self.model.stream(self._messages(image), settings)
        for i, _ in enumerate(generation):
            if i == 0 and on_first_token:
                on_first_token()
        assert generation.result is not None
        self.last_timings = generation.result.timings
        return generation.result.timings.new_tokens

    def answer(self, image: Image.Image, detail: int | None, new_tokens: int, *, read_image: bool) -> Any:
        """The engine's own Timings of one greedy answer: with `read_image` as for a new photo
        (vision included), else with the image's features kept (the prompt and tokens only)."""
        from smolvlm_desktop.engine.types import GenerationSettings

        if read_image:
            self.model.features.clear()
        settings = GenerationSettings(max_new_tokens=new_tokens, detail=detail)
        return self.model.generate(self._messages(image), settings).timings


def _run_options() -> Any:
    import onnxruntime as ort

    return ort.RunOptions()


def _input_dtype(graph: Any, name: str) -> str:
    from smolvlm_desktop.engine.runtime import numpy_dtype

    return numpy_dtype(graph.input_type(name))


# --- transformers -----------------------------------------------------------------------
@dataclass
class TorchState:
    cache: Any
    token: Any  # [1, 1] int64
    length: int


class TorchRunner:
    """Idefics3ForConditionalGeneration on the same weights, fp32, `threads` intra-op threads."""

    def __init__(self, model_dir: Path, checkpoint: Path | None, threads: int) -> None:
        import torch
        from transformers import AutoProcessor

        torch.set_num_threads(threads)
        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = _load_torch_model(checkpoint)
        self.own_detail = int(self.processor.image_processor.size["longest_edge"])

    def prepare(self, image: Image.Image, detail: int | None) -> Any:
        """The processor's tensors for one image + the question (what `generate` is given);
        detail None: the processor's own size, as a transformers user gets by default."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        size = {} if detail is None else {"size": {"longest_edge": detail}}
        return self.processor(text=text, images=[[image]], return_tensors="pt", **size)

    def tiles(self, prepared: Any) -> int:
        return int(prepared["pixel_values"].shape[1])

    def prompt_tokens(self, prepared: Any) -> int:
        return int(prepared["input_ids"].shape[1])

    def vision(self, prepared: Any) -> Any:
        with self.torch.inference_mode():
            return self.model.get_image_features(prepared["pixel_values"], prepared["pixel_attention_mask"],
                                                 return_dict=True)

    def prefill(self, prepared: Any, features: Any) -> TorchState:
        """One forward over the prompt with the image features given, as generate's first step."""
        from smolvlm_desktop.export import returned_cache

        ids = prepared["input_ids"]
        with self.torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=prepared["attention_mask"],
                             mm_encoder_outputs={"image": features}, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        return TorchState(returned_cache(out), token, int(ids.shape[1]))

    def decode(self, state: TorchState, steps: int) -> None:
        """Greedy steps with the KV cache: one token in, its logits out."""
        from smolvlm_desktop.export import cache_argument, returned_cache

        torch = self.torch
        with torch.inference_mode():
            for _ in range(steps):
                state.length += 1
                mask = torch.ones(1, state.length, dtype=torch.int64)
                out = self.model(input_ids=state.token, attention_mask=mask, use_cache=True, logits_to_keep=1,
                                 **cache_argument(self.model, state.cache))
                state.cache = returned_cache(out)
                state.token = out.logits[:, -1].argmax(dim=-1, keepdim=True)

    def caption(self, image: Image.Image, detail: int | None, new_tokens: int,
                on_first_token: Callable[[], None] | None = None) -> int:
        """Processor + greedy `generate`; min_new_tokens keeps it from stopping early."""
        inputs = self.prepare(image, detail)
        streamer = _FirstTokenStreamer(on_first_token) if on_first_token else None
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, streamer=streamer)
        return int(out.shape[1] - inputs["input_ids"].shape[1])


def _load_torch_model(checkpoint: Path | None) -> Any:
    import torch
    from transformers import Idefics3ForConditionalGeneration

    if checkpoint is None:  # the tiny arch: same seed, same weights as the bundled ONNX files
        from smolvlm_desktop.export.tiny import build_tiny_model

        return build_tiny_model()
    from smolvlm_desktop.export import quiet_progress_bars

    with quiet_progress_bars():
        return Idefics3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()


class _FirstTokenStreamer:
    """generate() calls put() with the prompt first, then once per new token."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.calls = 0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.callback()

    def end(self) -> None:
        pass


# --- measuring --------------------------------------------------------------------------
@dataclass
class Measurement:
    config: str
    cold: dict[str, float] = field(default_factory=dict)  # seconds since the process was started
    stages_ms: dict[str, list[float]] = field(default_factory=dict)  # raw samples
    peak_rss_mb: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Milliseconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def make_runner(config: str, model_dir: Path, checkpoint: Path | None, threads: int,
                ort_cache: Path | None = None) -> Runner:
    if config == "torch":
        return TorchRunner(model_dir, checkpoint, threads)
    return OnnxRunner(model_dir, config, threads, ort_cache)


def ort_cache_state(config: str, ort_cache: Path | None) -> str:
    """"off", or whether this load will make the optimised-graph cache or reuse it."""
    if config == "torch" or ort_cache is None:
        return "off"
    made = ort_cache.is_dir() and any(p.name.startswith(f"decoder_model_merged_{config}-")
                                      for p in ort_cache.iterdir())
    return "reused" if made else "made"


def measure(args: argparse.Namespace) -> Measurement:
    """Cold first caption, then every stage warm; see the module docstring."""
    m = Measurement(args.config)
    since_spawn = lambda: time.time() - args.spawned_at  # noqa: E731
    m.cold["python_started_s"] = since_spawn()  # interpreter up, numpy + PIL imported
    m.info["ort_cache"] = ort_cache_state(args.config, args.ort_cache)
    runner = make_runner(args.config, args.model_dir, args.checkpoint, args.threads, args.ort_cache)
    m.cold["loaded_s"] = since_spawn()
    one, five = bench_image(args.tile), bench_image(2 * args.tile)

    def first_token() -> None:
        m.cold["first_token_s"] = since_spawn()

    m.info["new_tokens"] = runner.caption(one, args.tile, args.new_tokens, first_token)
    m.peak_rss_mb["one_caption"] = peak_rss_mb()
    gemm_rate(m, args)  # in this process, under the load its stages meet: before them and after
    log(f"{args.config}: first caption done {since_spawn():.1f} s after start; timing stages")
    m.stages_ms, stage_info = measure_stages(runner, args, one, five)
    m.info.update(stage_info)
    if isinstance(runner, OnnxRunner) and args.batch_images > 1:
        log(f"{args.config}: {args.batch_images} photos as single captions, then as one batch")
        batch, batch_info = measure_batch(runner, args)
        m.stages_ms.update(batch)
        m.info.update(batch_info, batch_images=args.batch_images)
    if args.photos:
        log(f"{args.config}: a 13-tile and a 17-tile photo at the model's own detail "
            f"({photo_repeats(runner, args)} repeats)")
        photos, photo_info = measure_photos(runner, args)
        m.stages_ms.update(photos)
        m.info.update(photo_info)
        if isinstance(runner, OnnxRunner) and args.photo_batch > 0:
            log(f"{args.config}: {args.photo_batch} 13-tile photos as one batch")
            batch, batch_info = measure_photo_batch(runner, args)
            m.stages_ms.update(batch)
            m.info.update(batch_info)
    log(f"{args.config}: a chat about a 13-tile photo (cold, read ahead, follow-up, Regenerate)")
    conversation, conversation_info = measure_conversation(runner, args, m.stages_ms.get("photo13_first_token"))
    m.stages_ms.update(conversation)
    m.info.update(conversation_info)
    m.peak_rss_mb["whole_run"] = peak_rss_mb()
    gemm_rate(m, args)
    return m


def gemm_rate(m: Measurement, args: argparse.Namespace) -> None:
    """The machine's int8 GEMM rate (bench/kernels.py) measured here, appended to
    info["gemm_int8_gops"]: a stage's share of it is then read against the rate this process
    got, whatever the neighbours did during a long run on a shared machine."""
    if not args.gemm_shape:
        return
    from bench import kernels

    m_rows, k, n = (int(x) for x in args.gemm_shape.split(","))
    rate = kernels.gemm_rates(m_rows, k, n, args.threads, args.kernel_repeats)["int8_gops"]
    m.info.setdefault("gemm_int8_gops", []).append(rate)


def measure_stages(runner: Runner, args: argparse.Namespace, one: Image.Image,
                   five: Image.Image) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Raw millisecond samples per stage, and what was measured (tiles, prompt length)."""
    reps = args.repeats
    one_tile, five_tiles = runner.prepare(one, args.tile), runner.prepare(five, 2 * args.tile)
    samples = {"vision_1": timed(lambda: runner.vision(one_tile), reps),
               # 5 passes: fewer repeats, it is the slowest stage and only a cross-check.
               "vision_5": timed(lambda: runner.vision(five_tiles), max(1, min(reps, 3)))}
    if isinstance(runner, OnnxRunner):
        samples["prefill"], samples["decode_per_token"] = engine_prompt_and_decode(runner, one, args)
    else:
        assert isinstance(runner, TorchRunner)
        features = runner.vision(one_tile)
        samples["prefill"] = timed(lambda: runner.prefill(one_tile, features), reps)
        samples["decode_per_token"] = [
            t / args.new_tokens for t in timed_decode(runner, one_tile, features, args.new_tokens, reps)]
    tiles_read: list[int] = []

    def end_to_end() -> None:
        runner.caption(one, args.tile, args.new_tokens)
        if isinstance(runner, OnnxRunner):
            tiles_read.append(runner.last_timings.tiles_read)

    samples["end_to_end"] = timed(end_to_end, reps)
    info: dict[str, Any] = {"tiles_1": runner.tiles(one_tile), "tiles_5": runner.tiles(five_tiles),
                            "prompt_tokens": runner.prompt_tokens(one_tile)}
    if tiles_read:
        info["end_to_end_tiles_read"] = tiles_read[-reps:]
    return samples, info


def engine_prompt_and_decode(runner: "OnnxRunner", image: Image.Image,
                             args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Prefill ms and decode ms per token from the engine's own Timings of whole answers with
    the image's features kept: whatever graph and path the engine takes for a prompt and for
    each token is what is timed (embedding and the image splice included, as for transformers).
    A run of N tokens makes N - 1 decoder passes: the first token comes from the prefill."""
    runner.answer(image, args.tile, args.new_tokens, read_image=True)  # warm-up; the image is kept
    prefill, decode = [], []
    for _ in range(args.repeats):
        t = runner.answer(image, args.tile, args.new_tokens, read_image=False)
        assert t.tiles_read == 0 and t.new_tokens == args.new_tokens, t
        prefill.append(t.prefill_ms)
        decode.append(t.decode_ms / (t.new_tokens - 1))
    return prefill, decode


def write_photos(folder: Path, n: int, size: tuple[int, int], seed: int) -> list[Path]:
    """n different JPEG photos of `size` (different pixels: none is read from another's features)."""
    paths = []
    for i in range(n):
        paths.append(folder / f"photo{i:02d}.jpg")
        bench_image(max(size), seed=seed + i).resize(size).save(paths[-1], quality=90)
    return paths


def run_batch(model: Any, paths: list[Path], generation: Any) -> int:
    """The app's batch (BatchRunner: the next image decoded ahead, groups decoded together,
    caption files written) over `paths`, from nothing kept; the tiles it read."""
    from smolvlm_desktop.batch import BatchRunner, BatchSettings

    model.features.clear()
    before = model.vision_runs
    settings = BatchSettings(QUESTION, generation, outputs=("txt",), existing="overwrite")
    summary = BatchRunner(model, settings).run(paths)
    assert summary.done == len(paths), summary
    return model.vision_runs - before


def measure_batch(runner: "OnnxRunner", args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Per-image milliseconds for N one-tile JPEGs on disk: captioned one at a time (load +
    generate, what `caption` does per image) and as one batch (run_batch); each run from
    nothing kept, as new photos are."""
    import tempfile

    from smolvlm_desktop.engine.images import load_image
    from smolvlm_desktop.engine.types import GenerationSettings

    generation = GenerationSettings(max_new_tokens=args.new_tokens, detail=args.tile)
    model, n = runner.model, args.batch_images
    read: dict[str, list[int]] = {"single_captions_tiles_read": [], "batch_tiles_read": []}
    with tempfile.TemporaryDirectory(prefix="smolvlm-bench-") as folder:
        paths = write_photos(Path(folder), n, (args.tile, args.tile), seed=100)

        def singles() -> None:
            model.features.clear()
            before = model.vision_runs
            for path in paths:
                model.generate(runner._messages(load_image(path).image), generation)
            read["single_captions_tiles_read"].append(model.vision_runs - before)

        def batch() -> None:
            read["batch_tiles_read"].append(run_batch(model, paths, generation))

        repeats = max(1, min(args.repeats, 2))
        samples = {"single_captions_per_image": [t / n for t in timed(singles, repeats, warmup=0)],
                   "batch_per_image": [t / n for t in timed(batch, repeats, warmup=0)]}
    return samples, read


# transformers runs each photo row once: its 13-tile first token alone is 15-40 s on 2 cores.
TORCH_PHOTO_REPEATS = 1


def photo_repeats(runner: Runner, args: argparse.Namespace) -> int:
    return TORCH_PHOTO_REPEATS if isinstance(runner, TorchRunner) else args.photo_repeats


def measure_photos(runner: Runner, args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The 13-tile and the 17-tile photo at the model's own detail: reading it (preprocessing +
    vision) per tile, prefill, first token (from the call: everything a new photo costs) and
    end to end with --photo-tokens new tokens. Every run reads the photo afresh.

    ONNX: first token, reading and prefill from the engine's Timings of the same runs (one
    untimed warm-up of the 13-tile photo, for the new shapes); transformers: first token and
    end to end by `generate`, reading (processor + vision) and prefill by their own calls,
    TORCH_PHOTO_REPEATS times, no warm-up."""
    samples: dict[str, list[float]] = {}
    info: dict[str, Any] = {"photo_new_tokens": args.photo_tokens, "photo_detail": runner.own_detail,
                            "photo_size": {}}
    reps = photo_repeats(runner, args)
    for key, aspect in PHOTOS.items():
        image = photo(runner.own_detail, aspect)
        info["photo_size"][key] = list(image.size)
        if isinstance(runner, OnnxRunner):
            if key == "photo13":
                runner.answer(image, None, 1, read_image=True)
            runs = [runner.answer(image, None, 1, read_image=True) for _ in range(reps)]
            samples[f"{key}_read_per_tile"] = [t.image_ms / t.tiles_read for t in runs]
            samples[f"{key}_prefill"] = [t.prefill_ms for t in runs]
            samples[f"{key}_first_token"] = [t.first_token_ms for t in runs]
            info[f"{key}_tiles_read"] = [t.tiles_read for t in runs]
            info[f"{key}_tiles"], info[f"{key}_prompt_tokens"] = runs[0].tiles_read, runs[0].prompt_tokens
        else:
            assert isinstance(runner, TorchRunner)
            samples.update(torch_photo_stages(runner, image, key, reps))
            prepared = runner.prepare(image, None)
            info[f"{key}_tiles"], info[f"{key}_prompt_tokens"] = runner.tiles(prepared), runner.prompt_tokens(prepared)
            samples[f"{key}_first_token"] = timed(lambda: runner.caption(image, None, 1), reps, warmup=0)
        samples[f"{key}_end_to_end"] = timed(lambda: runner.caption(image, None, args.photo_tokens), reps, warmup=0)
    return samples, info


def torch_photo_stages(runner: "TorchRunner", image: Image.Image, key: str, reps: int) -> dict[str, list[float]]:
    """transformers' reading of a photo (its processor + get_image_features) per tile, and its
    prefill over the prompt with those features, `reps` times."""
    read, prefill = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        prepared = runner.prepare(image, None)
        features = runner.vision(prepared)
        read.append((time.perf_counter() - t0) * 1000 / runner.tiles(prepared))
        prefill += timed(lambda: runner.prefill(prepared, features), 1, warmup=0)
    return {f"{key}_read_per_tile": read, f"{key}_prefill": prefill}


def measure_photo_batch(runner: "OnnxRunner",
                        args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """--photo-batch different 13-tile JPEGs through the app's batch (run_batch) at the model's
    own detail, --photo-tokens each, once (each image is 13 vision passes already): ms per image."""
    import tempfile

    from smolvlm_desktop.engine.types import GenerationSettings

    generation = GenerationSettings(max_new_tokens=args.photo_tokens)  # detail: the model's own
    n, read = args.photo_batch, []
    w, h = PHOTOS["photo13"]
    with tempfile.TemporaryDirectory(prefix="smolvlm-bench-photos-") as folder:
        paths = write_photos(Path(folder), n, (runner.own_detail, runner.own_detail * h // w), seed=200)
        samples = timed(lambda: read.append(run_batch(runner.model, paths, generation)), 1, warmup=0)
    return {"photo_batch_per_image": [t / n for t in samples]}, {"photo_batch_images": n,
                                                                 "photo_batch_tiles_read": read}


FOLLOW_UP = "What else is in it?"


def conversation_photo(tile: int) -> tuple[Image.Image, int]:
    """A 4:3 photo and the detail at which it is 13 tiles (4 x 3 and the whole image), as a
    2048x1536 photo is at SmolVLM-256M's own detail; the image and the detail."""
    return photo(4 * tile, PHOTOS["photo13"]), 4 * tile


def measure_conversation(runner: Runner, args: argparse.Namespace,
                         photo_first_token: list[float] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Milliseconds to the first token in a chat about a 13-tile photo (the engine's own
    Timings.first_token_ms, from the call): the first question cold (nothing read before),
    the first question after the photo was read ahead (while the person typed: not timed),
    a follow-up with the answer in the history, Regenerate of that follow-up, and the same
    follow-up with nothing kept (what every turn cost before conversations were kept).
    transformers: its cold first question only (processor + generate up to one token); that
    is the 13-tile photo row's first token when it was measured (same photo, same detail)."""
    photo, detail = conversation_photo(args.tile)
    reps = max(1, min(args.repeats, 3))
    if isinstance(runner, TorchRunner):
        if photo_first_token and detail == runner.own_detail:
            return {"conversation_cold": list(photo_first_token)}, {}
        return {"conversation_cold": timed(lambda: runner.caption(photo, detail, 1), reps)}, {}
    assert isinstance(runner, OnnxRunner)
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    model = runner.model
    settings = GenerationSettings(max_new_tokens=args.new_tokens, detail=detail)
    ask = [Message("user", QUESTION, images=(photo,))]
    keys = ("conversation_cold", "conversation_read_ahead", "conversation_follow_up",
            "conversation_regenerate", "conversation_follow_up_uncached")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    info: dict[str, Any] = {}
    for rep in range(reps + 1):  # the first is a warm-up
        model.features.clear()
        chat = model.conversation()
        first = chat.generate(ask, settings)
        follow = ask + [Message("assistant", first.text.lstrip()), Message("user", FOLLOW_UP)]  # as the window
        up = chat.generate(follow, settings)
        again = chat.generate(follow, settings)
        info.update(conversation_tiles=first.timings.tiles_read,
                    conversation_prompt_tokens=first.timings.prompt_tokens,
                    conversation_follow_up_tokens_read=up.timings.prompt_tokens - up.timings.cached_tokens,
                    conversation_cache_mb=round(chat.nbytes / 2**20, 1))
        model.features.clear()
        ahead = model.conversation()
        ahead.read_ahead([Message("user", "", images=(photo,))], settings)
        after = ahead.generate(ask, settings)
        model.features.clear()
        uncached = model.generate(follow, settings)
        if rep:
            for key, result in zip(keys, (first, after, up, again, uncached)):
                samples[key].append(result.timings.first_token_ms)
    return samples, info


def timed_decode(runner: "TorchRunner", prepared: Any, features: Any, steps: int, repeats: int) -> list[float]:
    """Milliseconds for `steps` decode steps after an untimed prefill, `repeats` times (+1 warm-up)."""
    out = []
    for i in range(repeats + 1):
        state = runner.prefill(prepared, features)
        t0 = time.perf_counter()
        runner.decode(state, steps)
        if i:
            out.append((time.perf_counter() - t0) * 1000)
    return out


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.child")
    p.add_argument("--config", choices=CONFIGS, required=True)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--tile", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--spawned-at", type=float, default=None)
    p.add_argument("--batch-images", type=int, default=8,
                   help="photos for the batch-vs-single-captions stage (ONNX only; 0 skips it)")
    p.add_argument("--ort-cache", type=Path, default=None,
                   help="folder for ONNX Runtime's optimised graphs (as the app passes); none if absent")
    p.add_argument("--gemm-shape", default=None, metavar="M,K,N",
                   help="measure the int8 GEMM rate at this shape before and after the stages")
    p.add_argument("--kernel-repeats", type=int, default=5)
    p.add_argument("--photos", action=argparse.BooleanOptionalAction, default=True,
                   help="the 13- and 17-tile photo rows (default on)")
    p.add_argument("--photo-repeats", type=int, default=2, help="ONNX runs per photo row (transformers: 1)")
    p.add_argument("--photo-tokens", type=int, default=48, help="new tokens per photo caption")
    p.add_argument("--photo-batch", type=int, default=4, help="13-tile photos in the batch row (ONNX; 0 skips)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.spawned_at is None:
        args.spawned_at = time.time()
    m = measure(args)
    print(RESULT_MARKER + json.dumps(m.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
