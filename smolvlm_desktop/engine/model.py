"""The facade the faces use: load a model folder once, then stream answers about images.

    model = VisionLanguageModel.load(folder)
    for event in (gen := model.stream([Message("user", "What is this?", images=(img,))])):
        print(event.text, end="")
    print(gen.result.timings)

The path of one answer: processor (tiles) -> vision graph (all tiles in one call) -> prompt ids
-> embed graph -> image features spliced in at the <image> positions -> decoder with KV cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from .files import ModelFiles, load_model_files
from .generate import CacheLayout, DecoderState, TokenChooser, new_run_options
from .processor import preprocess
from .prompt import PromptBuilder
from .runtime import GraphSession, numpy_dtype, open_graph
from .types import (
    CancelToken,
    EngineError,
    GenerationResult,
    GenerationSettings,
    Message,
    ModelFolderError,
    ModelInfo,
    StopReason,
    Timings,
    TokenEvent,
)

GRAPHS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
# Tiles per vision-graph call: see VisionLanguageModel._vision for why not all at once.
VISION_TILES_PER_CALL = 1


class Generation:
    """An answer being generated: iterate for TokenEvents; `.result` is set once it ends.

    Iteration ends normally on a stop token, at max_new_tokens, or when cancelled
    (stop_reason "cancelled"); errors raise EngineError subclasses.
    """

    def __init__(self, events: Iterator[TokenEvent]) -> None:
        self._events = events
        self.result: GenerationResult | None = None

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> TokenEvent:
        return next(self._events)


class VisionLanguageModel:
    """A SmolVLM model folder loaded into three ONNX Runtime sessions."""

    def __init__(self, files: ModelFiles, variant: str, graphs: dict[str, GraphSession]) -> None:
        self.files = files
        self.variant = variant
        self.graphs = graphs
        self.prompt = PromptBuilder.from_files(files)
        self.cache_layout = CacheLayout.from_graph(
            graphs["decoder_model_merged"], files.config.get("text_config", {}))
        self.info = ModelInfo(
            name=files.name,
            folder=str(files.folder),
            variant=variant,
            providers={name: g.provider for name, g in graphs.items()},
            tile_size=files.image_processor.tile_size,
            longest_edge=files.image_processor.longest_edge,
            image_seq_len=files.image_seq_len,
        )

    @classmethod
    def load(cls, folder: str | Path, *, variant: str | None = None, provider: str = "auto",
             threads: int | None = None, cache_dir: str | Path | None = None) -> "VisionLanguageModel":
        """Read the folder and create the sessions (the slow part: seconds for big models).

        `cache_dir`: a folder the caller owns (e.g. the user cache dir) where ONNX Runtime's
        optimised copy of each CPU graph is kept, so later loads are about 3x faster. None
        (the default) writes nothing.
        """
        files = load_model_files(folder)
        chosen = files.choose_variant(variant)
        cache = Path(cache_dir) if cache_dir is not None else None
        graphs = {
            name: open_graph(name, files.graph_path(name, chosen), provider, threads, cache)
            for name in GRAPHS
        }
        return cls(files, chosen, graphs)

    @property
    def fallback_notes(self) -> dict[str, str]:
        """Graphs that did not get the provider asked for, and why (shown to the user)."""
        return {n: g.fallback_reason for n, g in self.graphs.items() if g.fallback_reason}

    def close(self) -> None:
        """Drop the sessions so their memory is returned (idle unload)."""
        self.graphs.clear()

    # --- generation -------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
               cancel: CancelToken | None = None) -> Generation:
        settings = settings or GenerationSettings()
        if not self.graphs:
            raise EngineError("the model was unloaded; load it again")
        if not messages:
            raise EngineError("nothing to answer: no messages")
        generation = Generation(iter(()))
        generation._events = self._run(generation, list(messages), settings, cancel)
        return generation

    def generate(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
                 cancel: CancelToken | None = None) -> GenerationResult:
        generation = self.stream(messages, settings, cancel)
        for _ in generation:
            pass
        assert generation.result is not None
        return generation.result

    def teacher_forced_logits(self, messages: Sequence[Message], continuation: Sequence[int],
                              settings: GenerationSettings | None = None) -> np.ndarray:
        """Logits [len(continuation) + 1, vocab] predicting each continuation token and the one after.

        Feeds the given tokens instead of the model's own choices, so that two variants (fp32
        and int8) can be compared position by position even when their free-running text
        would drift apart.
        """
        settings = settings or GenerationSettings()
        run_options = new_run_options(None)
        embeds, _ = self._prefill_inputs(list(messages), settings, run_options, Timings())
        state = DecoderState(self.graphs["decoder_model_merged"], self.cache_layout)
        rows = [state.forward(embeds, run_options)]
        for token in continuation:
            step = self._embed(np.array([[token]], dtype=np.int64), run_options)
            rows.append(state.forward(step, run_options))
        return np.stack(rows)

    def _run(self, generation: Generation, messages: list[Message], settings: GenerationSettings,
             cancel: CancelToken | None) -> Iterator[TokenEvent]:
        timings = Timings()
        started = time.perf_counter()
        token_ids: list[int] = []
        streamer = self.prompt.streamer()
        text_parts: list[str] = []
        stop_reason: StopReason = "max_tokens"
        run_options = new_run_options(cancel)
        try:
            embeds, prompt_ids = self._prefill_inputs(messages, settings, run_options, timings)
            timings.prompt_tokens = len(prompt_ids)
            state = DecoderState(self.graphs["decoder_model_merged"], self.cache_layout)
            chooser = TokenChooser(settings)
            stop_ids = set(self.files.stop_ids) | set(settings.extra_stop_ids)
            t0 = time.perf_counter()
            logits = state.forward(embeds, run_options)
            timings.prefill_ms += (time.perf_counter() - t0) * 1000
            seen = list(prompt_ids)
            for step in range(settings.max_new_tokens):
                token = chooser.choose(logits, seen)
                if step == 0:
                    timings.first_token_ms = (time.perf_counter() - started) * 1000
                if token in stop_ids:
                    stop_reason = "stop_token"
                    break
                token_ids.append(token)
                seen.append(token)
                timings.new_tokens = len(token_ids)
                delta = streamer.push(token)
                text_parts.append(delta)
                yield TokenEvent(token, delta)
                if cancel is not None and cancel.cancelled:
                    stop_reason = "cancelled"
                    break
                if step + 1 == settings.max_new_tokens:
                    break
                t0 = time.perf_counter()
                logits = state.forward(self._embed(np.array([[token]], dtype=np.int64), run_options),
                                       run_options)
                timings.decode_ms += (time.perf_counter() - t0) * 1000
        except _Terminated:
            stop_reason = "cancelled"
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT's own error types
            if not run_options.terminate:
                raise EngineError(f"generation failed: {str(exc).splitlines()[0][:300]}") from exc
            stop_reason = "cancelled"
        tail = streamer.flush()
        if tail:
            text_parts.append(tail)
            if token_ids:
                yield TokenEvent(token_ids[-1], tail)
        generation.result = GenerationResult(
            text="".join(text_parts), token_ids=token_ids, stop_reason=stop_reason, timings=timings)

    def _prefill_inputs(self, messages: list[Message], settings: GenerationSettings,
                        run_options: ort.RunOptions, timings: Timings) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the whole prompt with the image features in place of <image> tokens."""
        images = [img for m in messages for img in m.images]
        t0 = time.perf_counter()
        features = None
        grids: list[tuple[int, int]] = []
        if images:
            processed = preprocess(images, self.files.image_processor, settings.detail)
            grids = processed.grids
            features = self._vision(processed.pixel_values, processed.pixel_attention_mask, run_options)
        timings.image_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        ids = self.prompt.encode(messages, grids)
        embeds = self._embed(ids[None, :], run_options)
        if features is not None:
            embeds = splice_image_features(embeds, ids, features, self.files.image_token_id)
        timings.prefill_ms = (time.perf_counter() - t0) * 1000
        return embeds, ids

    def _vision(self, pixel_values: np.ndarray, mask: np.ndarray, run_options: ort.RunOptions) -> np.ndarray:
        """Image features [tiles, image_seq_len, hidden], VISION_TILES_PER_CALL tiles per graph call.

        One call over all tiles is no faster (each 512-px tile is already a 1024-row matrix
        product) but holds every tile's attention scores at once: 12 heads x 1024 x 1024 floats
        = 48 MB per tile, so a 17-tile photo at full detail would take ~0.8 GB more memory.
        Separate calls also let a cancel take effect between tiles.
        """
        graph = self.graphs["vision_encoder"]
        dtype = np.dtype(numpy_dtype(graph.input_type("pixel_values")))
        pixel_values = pixel_values.astype(dtype, copy=False)
        step = VISION_TILES_PER_CALL
        parts = [
            _run(graph, {"pixel_values": pixel_values[:, i:i + step],
                         "pixel_attention_mask": mask[:, i:i + step]}, run_options)[0]
            for i in range(0, pixel_values.shape[1], step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _embed(self, ids: np.ndarray, run_options: ort.RunOptions) -> np.ndarray:
        return _run(self.graphs["embed_tokens"], {"input_ids": ids}, run_options)[0]


class _Terminated(Exception):
    """ONNX Runtime stopped a run because the cancel token set RunOptions.terminate."""


def _run(graph: GraphSession, feeds: dict, run_options: ort.RunOptions) -> list[np.ndarray]:
    if run_options.terminate:
        raise _Terminated()
    try:
        return graph.run(feeds, run_options)
    except Exception as exc:  # noqa: BLE001
        if run_options.terminate:
            raise _Terminated() from exc
        raise EngineError(f"{graph.path.name} failed: {str(exc).splitlines()[0][:300]}") from exc


def splice_image_features(embeds: np.ndarray, ids: np.ndarray, features: np.ndarray,
                          image_token_id: int) -> np.ndarray:
    """Put the vision features, in order, where the prompt has <image> tokens."""
    positions = np.flatnonzero(ids == image_token_id)
    flat = features.reshape(-1, features.shape[-1])
    if len(positions) != flat.shape[0]:
        raise ModelFolderError(
            f"the prompt has {len(positions)} image tokens but the vision graph returned "
            f"{flat.shape[0]} feature rows; image_seq_len in processor_config.json may not match "
            "the vision graph"
        )
    embeds = embeds.copy()
    embeds[0, positions] = flat.astype(embeds.dtype, copy=False)
    return embeds
