"""The facade the faces use: load a model folder once, then stream answers about images.

    model = VisionLanguageModel.load(folder)
    for event in (gen := model.stream([Message("user", "What is this?", images=(img,))])):
        print(event.text, end="")
    print(gen.result.timings)

The path of one answer: processor (tiles) -> prompt ids (refused if longer than the model
reads) -> vision graph (one tile per call; features kept by image content, features.py) ->
embed graph -> image features spliced in at the <image> positions -> decoder with KV cache.
`conversation()` keeps that cache between the answers of one chat (conversation.py).
`generate_many` answers several conversations, decoding them together where that changes no
answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

from .files import ModelFiles, load_model_files
from .generate import (Answer, BatchDecoder, CacheLayout, DecoderState, InPlaceDecoderState,
                       decodes_batch_invariantly, updates_cache_in_place,
                       new_run_options)
from .conversation import DEFAULT_MAX_BYTES as DEFAULT_CONVERSATION_BYTES, Conversation
from .features import FeatureCache, ImageFeatures, image_digest
from .processor import ProcessedImages
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
    Timings,
    TokenEvent,
)

GRAPHS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
# Tiles per vision-graph call: see VisionLanguageModel._vision for why not all at once.
VISION_TILES_PER_CALL = 1
# on_progress(tiles read, tiles to read) while an answer's images are read
ProgressCallback = Callable[[int, int], None]


@dataclass
class ImageRead:
    """One image of a prompt: its feature-cache key and grid, and either its features (kept
    from before) or its tiles still to be read (`processed`)."""

    key: str
    grid: tuple[int, int]
    tiles: int
    processed: ProcessedImages | None
    features: np.ndarray | None


def image_spans(ids: np.ndarray, reads: Sequence[ImageRead], image_token_id: int,
                seq_len: int) -> list[np.ndarray]:
    """The prompt positions of each image's <image> tokens, in order."""
    positions = np.flatnonzero(ids == image_token_id)
    counts = [r.tiles * seq_len for r in reads]
    if len(positions) != sum(counts):
        raise ModelFolderError(
            f"the prompt has {len(positions)} image tokens but its {len(reads)} images need "
            f"{sum(counts)}; the tokenizer may not match the model")
    return np.split(positions, np.cumsum(counts)[:-1]) if reads else []


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

    def __init__(self, files: ModelFiles, variant: str, graphs: dict[str, GraphSession],
                 open_prompt_decoder: Callable[[], GraphSession] | None = None) -> None:
        self.files = files
        self.variant = variant
        self.graphs = graphs
        # The prompt decoder (engine/files.py, PROMPT_GRAPH_SUFFIX), opened on the first long
        # prompt: a one-tile picture never pays its memory.
        self._open_prompt_decoder = open_prompt_decoder
        self._prompt_decoder: GraphSession | None = None
        self.prompt = PromptBuilder.from_files(files)
        self.cache_layout = CacheLayout.from_graph(
            graphs["decoder_model_merged"], files.text_config)
        self._batch_invariant: bool | None = None
        self._in_place: bool | None = None
        self.features = FeatureCache()  # vision features by image content (features.py)
        self.vision_runs = 0  # vision graph calls so far: what the feature cache saves
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
            name: open_graph(name, files.graph_path(name, chosen), provider, threads, cache,
                             files.family.name, files.family.graph_inputs.get(name))
            for name in GRAPHS
        }
        prompt_path = files.prompt_graph_path(chosen)
        open_prompt = None
        if prompt_path is not None:
            inputs = files.family.graph_inputs.get("decoder_model_merged")
            open_prompt = partial(open_graph, "decoder_model_merged", prompt_path, provider, threads, cache,
                                  files.family.name, inputs)
        return cls(files, chosen, graphs, open_prompt)

    @property
    def fallback_notes(self) -> dict[str, str]:
        """Graphs that did not get the provider asked for, and why (shown to the user)."""
        return {n: g.fallback_reason for n, g in self.graphs.items() if g.fallback_reason}

    def close(self) -> None:
        """Drop the sessions so their memory is returned (idle unload)."""
        self.graphs.clear()
        self._prompt_decoder = None
        self.features.clear()

    # --- generation -------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
               cancel: CancelToken | None = None) -> Generation:
        settings = settings or GenerationSettings()
        self._check_usable(messages)
        generation = Generation(iter(()))
        generation._events = self._run(
            generation, lambda run_options, started: self._start(list(messages), settings, run_options, started),
            cancel)
        return generation

    def conversation(self, max_bytes: int = DEFAULT_CONVERSATION_BYTES) -> Conversation:
        """A chat that keeps its decoder cache between answers: a follow-up, a Regenerate or
        an Edit reads only what changed (conversation.py). Same answers as `stream`."""
        return Conversation(self, max_bytes)

    def _check_usable(self, messages: Sequence[Message]) -> None:
        if not self.graphs:
            raise EngineError("the model was unloaded; load it again")
        if not messages:
            raise EngineError("nothing to answer: no messages")

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
        state = self.new_decoder_state()
        rows = [state.forward(embeds, run_options)]
        for token in continuation:
            step = self._embed(np.array([[token]], dtype=np.int64), run_options)
            rows.append(state.forward(step, run_options))
        return np.stack(rows)

    def generate_many(self, conversations: Sequence[Sequence[Message]], settings: GenerationSettings | None = None,
                      cancel: CancelToken | None = None,
                      on_token: Callable[[int, TokenEvent], None] | None = None) -> list[GenerationResult | EngineError]:
        """Answer several conversations, decoding them together where that changes no answer.

        Each conversation is prefilled alone (vision, prompt), then all decode in one batch
        (BatchDecoder), dropping each as it ends. On a decoder whose rows depend on their
        batch-mates (`decodes_batch_invariantly`), they are answered one after another instead.
        Returns, in order, each answer or the EngineError that stopped that one conversation;
        `on_token(index, event)` streams tokens. Timings: a batched step's time is shared
        out among the rows it served, so that per-answer times add up to the time taken."""
        settings = settings or GenerationSettings()
        if not self.graphs:
            raise EngineError("the model was unloaded; load it again")
        if len(conversations) > 1 and not self.decodes_in_batches:
            return [self._generate_one(i, c, settings, cancel, on_token) for i, c in enumerate(conversations)]
        results: list[GenerationResult | EngineError | None] = [None] * len(conversations)
        failure: EngineError | None = None
        run_options = new_run_options(cancel)
        rows: list[tuple[int, Answer, DecoderState, np.ndarray]] = []
        try:
            for index, messages in enumerate(conversations):
                if cancel is not None and cancel.cancelled:
                    break
                try:
                    rows.append((index, *self._start(list(messages), settings, run_options, time.perf_counter())))
                except EngineError as exc:
                    results[index] = exc
            self._decode_together(rows, run_options, cancel, on_token)
        except _Terminated:
            for _, answer, _, _ in rows:
                answer.cancel()
        except EngineError as exc:  # a batched decoder call failed: every unfinished answer with it
            failure = exc
        except Exception as exc:  # noqa: BLE001 - ORT's own error types, from a decoder call
            if not run_options.terminate:
                failure = EngineError(f"generation failed: {str(exc).splitlines()[0][:300]}")
            for _, answer, _, _ in rows:
                if failure is None:
                    answer.cancel()  # the cancel token stopped ONNX Runtime mid-call
        for index, answer, _, _ in rows:
            if failure is not None and not answer.done:
                results[index] = failure
                continue
            result, tail = answer.finish()
            if tail is not None and on_token is not None:
                on_token(index, tail)
            results[index] = result
        return [r if r is not None else GenerationResult("", [], "cancelled", Timings()) for r in results]

    def _generate_one(self, index: int, messages: Sequence[Message], settings: GenerationSettings,
                      cancel: CancelToken | None, on_token: Callable[[int, TokenEvent], None] | None
                      ) -> GenerationResult | EngineError:
        try:
            generation = self.stream(messages, settings, cancel)
            for event in generation:
                if on_token is not None:
                    on_token(index, event)
        except EngineError as exc:
            return exc
        assert generation.result is not None
        return generation.result

    @property
    def decodes_in_batches(self) -> bool:
        """Whether this decoder gives each conversation the same logits in a batch as alone
        (measured once, on first use: a few small decoder calls)."""
        if self._batch_invariant is None:
            self._batch_invariant = decodes_batch_invariantly(
                self.graphs["decoder_model_merged"], self.cache_layout, self._hidden_size())
        return self._batch_invariant

    def new_decoder_state(self) -> DecoderState:
        """An empty KV cache for one conversation: written in place where the decoder allows
        it (`updates_cache_in_place`, measured once on first use), else copied at each step."""
        decoder = self.graphs["decoder_model_merged"]
        if self._in_place is None:
            self._in_place = updates_cache_in_place(decoder, self.cache_layout, self._hidden_size())
        prompt = self.prompt_decoder if self._open_prompt_decoder is not None else None
        if self._in_place:
            return InPlaceDecoderState(decoder, self.cache_layout, prompt_decoder=prompt)
        return DecoderState(decoder, self.cache_layout, prompt)

    def prompt_decoder(self) -> GraphSession:
        """The prompt decoder, opened on first use (only for a model that has one)."""
        if self._prompt_decoder is None:
            if self._open_prompt_decoder is None or not self.graphs:
                raise EngineError("this model has no prompt decoder" if self.graphs else
                                  "the model was unloaded; load it again")
            self._prompt_decoder = self._open_prompt_decoder()
        return self._prompt_decoder

    def _hidden_size(self) -> int:
        return int(self.files.text_config.get("hidden_size") or 0) or int(
            self.graphs["embed_tokens"].session.get_outputs()[0].shape[-1])

    def _decode_together(self, rows: list[tuple[int, Answer, DecoderState, np.ndarray]],
                         run_options: ort.RunOptions, cancel: CancelToken | None,
                         on_token: Callable[[int, TokenEvent], None] | None) -> None:
        active = [(index, answer) for index, answer, _, _ in rows]
        if not active:
            return
        batch = BatchDecoder([state for _, _, state, _ in rows])
        logits = np.stack([first for _, _, _, first in rows])
        while True:
            for (index, answer), row_logits in zip(active, logits):
                event = answer.step(row_logits)
                if event is not None and on_token is not None:
                    on_token(index, event)
            if cancel is not None and cancel.cancelled:
                for _, answer in active:
                    answer.cancel()
                return
            going = [k for k, (_, answer) in enumerate(active) if not answer.done]
            if not going:
                return
            if len(going) < len(active):
                batch.keep(going)
                active = [active[k] for k in going]
            ids = np.array([[answer.token_ids[-1]] for _, answer in active], dtype=np.int64)
            t0 = time.perf_counter()
            logits = batch.forward(self._embed(ids, run_options), run_options)
            share = (time.perf_counter() - t0) * 1000 / len(active)
            for _, answer in active:
                answer.timings.decode_ms += share

    def _start(self, messages: list[Message], settings: GenerationSettings, run_options: ort.RunOptions,
               started: float) -> tuple[Answer, DecoderState, np.ndarray]:
        """Prefill one conversation: its answer-to-be, its cache, and the first logits."""
        timings = Timings()
        embeds, prompt_ids = self._prefill_inputs(messages, settings, run_options, timings)
        timings.prompt_tokens = len(prompt_ids)
        state = self.new_decoder_state()
        t0 = time.perf_counter()
        logits = state.forward(embeds, run_options)
        timings.prefill_ms += (time.perf_counter() - t0) * 1000
        stop_ids = set(self.files.stop_ids) | set(settings.extra_stop_ids)
        answer = Answer(settings, stop_ids, list(prompt_ids), self.prompt.streamer(), timings, started)
        limit = self._max_positions()
        if limit is not None:  # the prompt holds positions 0..P-1; each token fed takes one more
            answer.room = limit - len(prompt_ids)
        return answer, state, logits

    def _run(self, generation: Generation, start: Callable[[ort.RunOptions, float], tuple[Answer, DecoderState, np.ndarray]],
             cancel: CancelToken | None) -> Iterator[TokenEvent]:
        """The one-conversation loop; `start(run_options, started)` prefills (see _start)."""
        started = time.perf_counter()
        run_options = new_run_options(cancel)
        answer: Answer | None = None
        try:
            answer, state, logits = start(run_options, started)
            while (event := answer.step(logits)) is not None:
                yield event
                if cancel is not None and cancel.cancelled:
                    answer.cancel()
                if answer.done:
                    break
                t0 = time.perf_counter()
                logits = state.forward(self._embed(np.array([[event.token_id]], dtype=np.int64), run_options),
                                       run_options)
                answer.timings.decode_ms += (time.perf_counter() - t0) * 1000
        except _Terminated:
            if answer is not None:
                answer.cancel()
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT's own error types
            if not run_options.terminate:
                raise EngineError(f"generation failed: {str(exc).splitlines()[0][:300]}") from exc
            if answer is not None:
                answer.cancel()
        if answer is None:  # cancelled before the prompt was read
            generation.result = GenerationResult("", [], "cancelled", Timings())
            return
        generation.result, tail = answer.finish()
        if tail is not None:
            yield tail

    def _prefill_inputs(self, messages: list[Message], settings: GenerationSettings,
                        run_options: ort.RunOptions, timings: Timings) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the whole prompt with the image features in place of <image> tokens."""
        ids, reads = self._prompt(messages, settings, timings)
        return self._embeds(ids, reads, 0, run_options, timings), ids

    def _prompt(self, messages: Sequence[Message], settings: GenerationSettings,
                timings: Timings) -> tuple[np.ndarray, list[ImageRead]]:
        """The prompt ids and what each image needs (tiles to read or features kept), checked
        against the model's length before any tile is read."""
        t0 = time.perf_counter()
        reads = [self._plan_image(img, settings.detail) for m in messages for img in m.images]
        ids = self.prompt.encode(messages, [r.grid for r in reads])
        self._check_length(len(ids), settings)
        timings.image_ms += (time.perf_counter() - t0) * 1000
        return ids, reads

    def _plan_image(self, image: Image.Image, detail: int | None) -> ImageRead:
        """One image's key and grid, with its features when they are kept, else its tiles."""
        longest = self.files.image_processor.longest_edge if detail is None else detail
        key = f"{self.variant}|{longest}|{image_digest(image)}"
        kept = self.features.get(key)
        if kept is not None:
            return ImageRead(key, kept.grid, kept.features.shape[0], None, kept.features)
        processed = self.files.family.preprocess([image], self.files.image_processor, longest)
        return ImageRead(key, processed.grids[0], processed.pixel_values.shape[1], processed, None)

    def _read_images(self, reads: Sequence[ImageRead], run_options: ort.RunOptions,
                     on_progress: ProgressCallback | None = None) -> None:
        """Run the vision graph over the tiles not read yet of these images, keeping what it
        gives (FeatureCache) tile by tile, so that a stop loses at most the tile being read."""
        pending = [r for r in reads if r.features is None]
        total = sum(r.tiles for r in pending)
        done = sum(len(self.features.partial(r.key)) for r in pending)
        for read in pending:
            assert read.processed is not None
            tiles = self.features.partial(read.key)
            while len(tiles) < read.tiles:
                if on_progress is not None:
                    on_progress(done, total)
                i = len(tiles)
                tiles.append(self._vision(read.processed.pixel_values[:, i:i + 1],
                                          read.processed.pixel_attention_mask[:, i:i + 1], run_options))
                done += 1
            read.features = np.concatenate(tiles, axis=0) if len(tiles) > 1 else tiles[0]
            self._check_features(read)
            self.features.put(read.key, ImageFeatures(read.grid, read.features))
        if pending and on_progress is not None:
            on_progress(total, total)

    def _check_features(self, read: ImageRead) -> None:
        want = (read.tiles, self.files.image_seq_len)
        if read.features is None or tuple(read.features.shape[:2]) != want:
            got = 0 if read.features is None else read.features.shape[0] * read.features.shape[1]
            raise ModelFolderError(
                f"the prompt has {want[0] * want[1]} image tokens but the vision graph returned "
                f"{got} feature rows; image_seq_len in processor_config.json may not match "
                "the vision graph")

    def _embeds(self, ids: np.ndarray, reads: Sequence[ImageRead], start: int,
                run_options: ort.RunOptions, timings: Timings,
                on_progress: ProgressCallback | None = None) -> np.ndarray:
        """Embeddings of ids[start:], with the image features in place of its <image> tokens
        (reading the tiles of only the images that have tokens there)."""
        spans = image_spans(ids, reads, self.files.image_token_id, self.files.image_seq_len)
        needed = [r for r, span in zip(reads, spans) if span.size and span[-1] >= start]
        t0, runs = time.perf_counter(), self.vision_runs
        try:
            self._read_images(needed, run_options, on_progress)
        finally:
            timings.image_ms += (time.perf_counter() - t0) * 1000
            timings.tiles_read += self.vision_runs - runs
        t0 = time.perf_counter()
        embeds = self._embed(ids[None, start:], run_options)
        if needed:
            embeds = embeds.copy()
            for read, span in zip(reads, spans):
                if span.size and span[-1] >= start:
                    rows = read.features.reshape(-1, read.features.shape[-1])  # type: ignore[union-attr]
                    keep = span >= start
                    embeds[0, span[keep] - start] = rows[keep].astype(embeds.dtype, copy=False)
        timings.prefill_ms += (time.perf_counter() - t0) * 1000
        return embeds

    def _check_length(self, prompt_tokens: int, settings: GenerationSettings) -> None:
        """Refuse, before the vision pass, a prompt the model cannot read (its positions end
        at max_position_embeddings; the RoPE tables of the exported decoder end there too)."""
        limit = self._max_positions()
        if limit and prompt_tokens + 1 > limit:
            raise EngineError(
                f"this prompt is {prompt_tokens} tokens with its images; the model reads at most {int(limit)}. "
                "Choose a lower detail or fewer images")

    def _max_positions(self) -> int | None:
        """max_position_embeddings of the text model, if the config says (a long answer stops
        there with stop_reason "length" instead of running into the graph's limit)."""
        limit = self.files.text_config.get("max_position_embeddings")
        return int(limit) if limit else None

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
        parts = []
        for i in range(0, pixel_values.shape[1], step):
            feeds = self.files.family.vision_feeds(pixel_values[:, i:i + step], mask[:, i:i + step])
            parts.append(_run(graph, feeds, run_options)[0])
            self.vision_runs += 1
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
