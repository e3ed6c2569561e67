"""Measure one configuration (int8 ONNX, fp32 ONNX or transformers fp32) in its own process.

    python -m bench.child --config int8 --model-dir DIR --tile 512 --threads 2 --repeats 5 \
        --spawned-at <time.time() of the parent just before it started this process>

Why a process per configuration: peak RSS (``ru_maxrss``) only grows, so two configurations
in one process would mix their peaks; and a fresh process is what "cold start" means.

The process first does what a user's first caption does (load, then one 512-px image + 32
tokens) and notes the wall-clock time of the first token and the peak RSS so far. Then it
times each stage separately, warm, several times. The last line of stdout is
``BENCH-RESULT {json}``; progress goes to stderr.

The ONNX side uses the engine itself (``VisionLanguageModel``, its graph sessions, its
``new_decoder_state``); the transformers side uses ``Idefics3ForConditionalGeneration`` the way its
``generate`` does (KV cache, logits of the last position only).
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
    """A deterministic size x size RGB image with structure (a gradient plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), ((x + y) * 7) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


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

    def prepare(self, image: Image.Image, detail: int) -> Any: ...
    def tiles(self, prepared: Any) -> int: ...
    def prompt_tokens(self, prepared: Any) -> int: ...
    def vision(self, prepared: Any) -> Any: ...
    def prefill(self, prepared: Any, features: Any) -> Any: ...
    def decode(self, state: Any, steps: int) -> None: ...
    def caption(self, image: Image.Image, detail: int, new_tokens: int,
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

    def prefill(self, prepared: OnnxPrepared, features: np.ndarray) -> tuple[Any, int]:
        """Embed the prompt, splice the image in, run the decoder over it: (state, next token)."""
        from smolvlm_desktop.engine.model import splice_image_features

        embeds = self._embed(prepared.ids[None, :])
        embeds = splice_image_features(embeds, prepared.ids, features, self.model.files.image_token_id)
        state = self.model.new_decoder_state()
        logits = state.forward(embeds, self.run_options)
        return state, int(np.argmax(logits))

    def decode(self, state: tuple[Any, int], steps: int) -> None:
        decoder, token = state
        for _ in range(steps):
            logits = decoder.forward(self._embed(np.array([[token]], dtype=np.int64)), self.run_options)
            token = int(np.argmax(logits))

    def caption(self, image: Image.Image, detail: int, new_tokens: int,
                on_first_token: Callable[[], None] | None = None) -> int:
        """What the app does for one caption: model.stream from a PIL image, greedy."""
        from smolvlm_desktop.engine.types import GenerationSettings

        settings = GenerationSettings(max_new_tokens=new_tokens, detail=detail)
        generation = self.model.stream(self._messages(image), settings)
        for i, _ in enumerate(generation):
            if i == 0 and on_first_token:
                on_first_token()
        assert generation.result is not None
        return generation.result.timings.new_tokens

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.model.graphs["embed_tokens"].run({"input_ids": ids}, self.run_options)[0]


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

    def prepare(self, image: Image.Image, detail: int) -> Any:
        """The processor's tensors for one image + the question (what `generate` is given)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.processor(text=text, images=[[image]], return_tensors="pt",
                              size={"longest_edge": detail})

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

    def caption(self, image: Image.Image, detail: int, new_tokens: int,
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
    log(f"{args.config}: first caption done {since_spawn():.1f} s after start; timing stages")
    m.stages_ms, stage_info = measure_stages(runner, args, one, five)
    m.info.update(stage_info)
    log(f"{args.config}: a chat about a 13-tile photo (cold, read ahead, follow-up, Regenerate)")
    conversation, conversation_info = measure_conversation(runner, args)
    m.stages_ms.update(conversation)
    m.info.update(conversation_info)
    if isinstance(runner, OnnxRunner) and args.batch_images > 1:
        log(f"{args.config}: {args.batch_images} photos as single captions, then as one batch")
        m.stages_ms.update(measure_batch(runner, args))
        m.info["batch_images"] = args.batch_images
    m.peak_rss_mb["whole_run"] = peak_rss_mb()
    return m


def measure_stages(runner: Runner, args: argparse.Namespace, one: Image.Image,
                   five: Image.Image) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Raw millisecond samples per stage, and what was measured (tiles, prompt length)."""
    reps = args.repeats
    one_tile, five_tiles = runner.prepare(one, args.tile), runner.prepare(five, 2 * args.tile)
    samples = {"vision_1": timed(lambda: runner.vision(one_tile), reps),
               # 5 passes: fewer repeats, it is the slowest stage and only a cross-check.
               "vision_5": timed(lambda: runner.vision(five_tiles), max(1, min(reps, 3)))}
    features = runner.vision(one_tile)
    samples["prefill"] = timed(lambda: runner.prefill(one_tile, features), reps)
    samples["decode_per_token"] = [
        t / args.new_tokens for t in timed_decode(runner, one_tile, features, args.new_tokens, reps)]
    samples["end_to_end"] = timed(lambda: runner.caption(one, args.tile, args.new_tokens), reps)
    info = {"tiles_1": runner.tiles(one_tile), "tiles_5": runner.tiles(five_tiles),
            "prompt_tokens": runner.prompt_tokens(one_tile)}
    return samples, info


def measure_batch(runner: "OnnxRunner", args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-image milliseconds for N one-tile JPEGs on disk: captioned one at a time (load +
    generate, what `caption` does per image) and as one batch (BatchRunner: the next image
    decoded ahead, groups decoded together, caption files written)."""
    import tempfile

    from smolvlm_desktop.batch import BatchRunner, BatchSettings
    from smolvlm_desktop.engine.images import load_image
    from smolvlm_desktop.engine.types import GenerationSettings

    generation = GenerationSettings(max_new_tokens=args.new_tokens, detail=args.tile)
    model, n = runner.model, args.batch_images
    with tempfile.TemporaryDirectory(prefix="smolvlm-bench-") as folder:
        paths = []
        for i in range(n):
            paths.append(Path(folder) / f"photo{i:02d}.jpg")
            bench_image(args.tile, seed=100 + i).save(paths[-1], quality=90)

        def singles() -> None:
            for path in paths:
                model.generate(runner._messages(load_image(path).image), generation)

        def batch() -> None:
            settings = BatchSettings(QUESTION, generation, outputs=("txt",), existing="overwrite")
            summary = BatchRunner(model, settings).run(paths)
            assert summary.done == n, summary

        repeats = max(1, min(args.repeats, 2))
        return {"single_captions_per_image": [t / n for t in timed(singles, repeats, warmup=0)],
                "batch_per_image": [t / n for t in timed(batch, repeats, warmup=0)]}


FOLLOW_UP = "What else is in it?"


def conversation_photo(tile: int) -> tuple[Image.Image, int]:
    """A 4:3 photo and the detail at which it is 13 tiles (4 x 3 and the whole image), as a
    2048x1536 photo is at SmolVLM-256M's own detail; the image and the detail."""
    photo = bench_image(4 * tile).resize((4 * tile, 3 * tile))
    return photo, 4 * tile


def measure_conversation(runner: Runner, args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Milliseconds to the first token in a chat about a 13-tile photo (the engine's own
    Timings.first_token_ms, from the call): the first question cold (nothing read before),
    the first question after the photo was read ahead (while the person typed: not timed),
    a follow-up with the answer in the history, Regenerate of that follow-up, and the same
    follow-up with nothing kept (what every turn cost before conversations were kept).
    transformers: its cold first question only (processor + generate up to one token)."""
    photo, detail = conversation_photo(args.tile)
    reps = max(1, min(args.repeats, 3))
    if isinstance(runner, TorchRunner):
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


def timed_decode(runner: Runner, prepared: Any, features: Any, steps: int, repeats: int) -> list[float]:
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
