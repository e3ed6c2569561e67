"""A conversation that keeps its KV cache between answers, so a follow-up reads only itself.

    chat = model.conversation()
    chat.read_ahead([Message("user", "", images=(img,))])   # optional: while the person types
    first = chat.generate([Message("user", "What is this?", images=(img,))])
    later = chat.generate([Message("user", "What is this?", images=(img,)),
                           Message("assistant", first.text.lstrip()), Message("user", "And the colour?")])

Each call still takes the whole conversation, exactly as `model.stream` does, and gives the
very answer `model.stream` gives; the cache only decides how much of it need not be read
again. What it holds is named position by position (`_keys`: a token id, or the feature key of
the image whose features sit there), and each call keeps the longest run of positions that
the new prompt starts with, rewinds the cache to there and reads the rest. So:

- a follow-up reads only the new turn (and the previous answer's tokens that were never fed);
- Regenerate and Edit rewind to before the turn: nothing after it is kept;
- another image, another detail or a changed system prompt keeps only what comes before it;
- where the chat template re-renders an earlier answer differently from the tokens that were
  generated, the kept run ends there by itself and the rest is read. Give answers back with
  `text.lstrip()`, as the window does: the template writes "Assistant: " itself, and the
  answer's own leading space would make a token the model never wrote.

Bounded: after an answer, a cache larger than `max_bytes` is dropped (the next question reads
the whole conversation again, as a fresh model would). `nbytes` says what it holds now.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnxruntime as ort

from .generate import Answer, DecoderState, new_run_options
from .types import CancelToken, GenerationResult, GenerationSettings, Message, Timings

if TYPE_CHECKING:
    from .model import Generation, ImageRead, ProgressCallback, VisionLanguageModel

# 256M fp32 keeps ~46 KB per position: 256 MB is some 5,500 tokens (13-tile photos are 878).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def prompt_keys(ids: np.ndarray, reads: Sequence["ImageRead"], spans: Sequence[np.ndarray]) -> list:
    """What sits at each prompt position: its token id, or for an image token the image's key
    (the same id at every image position; the features there are what differ)."""
    keys: list = ids.tolist()
    for read, span in zip(reads, spans):
        for position in span.tolist():
            keys[position] = read.key
    return keys


def common_prefix(kept: Sequence, wanted: Sequence, limit: int) -> int:
    """How many leading positions `kept` and `wanted` share, at most `limit`."""
    n = min(len(kept), len(wanted), limit)
    for i in range(n):
        if kept[i] != wanted[i]:
            return i
    return n


class Conversation:
    """One chat's decoder cache, reused by each later question about it (see the module doc)."""

    def __init__(self, model: "VisionLanguageModel", max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.model = model
        self.max_bytes = max_bytes
        self._state: DecoderState | None = None
        self._keys: list = []  # what the cache holds, position by position
        self._pending: tuple[list, Answer | None] | None = None  # the last call's prompt keys, answer

    @property
    def tokens(self) -> int:
        """Positions the cache holds now."""
        self._settle()
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Memory the cache holds now."""
        self._settle()
        return self._state.nbytes if self._state is not None else 0

    def clear(self) -> None:
        """Drop the cache (its memory is returned); the next call reads everything."""
        self._state, self._keys, self._pending = None, [], None

    # --- answering --------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
               cancel: CancelToken | None = None,
               on_progress: "ProgressCallback | None" = None) -> "Generation":
        """As VisionLanguageModel.stream, reading only what the cache does not hold.

        `on_progress(read, total)` is told as the tiles of images not yet read go through the
        vision graph."""
        from .model import Generation

        settings = settings or GenerationSettings()
        self.model._check_usable(messages)
        generation = Generation(iter(()))
        generation._events = self.model._run(
            generation, lambda run_options, started: self._start(list(messages), settings, run_options,
                                                                 started, on_progress), cancel)
        return generation

    def generate(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
                 cancel: CancelToken | None = None,
                 on_progress: "ProgressCallback | None" = None) -> GenerationResult:
        generation = self.stream(messages, settings, cancel, on_progress)
        for _ in generation:
            pass
        assert generation.result is not None
        return generation.result

    def read_ahead(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
                   cancel: CancelToken | None = None,
                   on_progress: "ProgressCallback | None" = None) -> Timings | None:
        """Read the images of `messages` and prefill the conversation up to and including their
        last image token, so that the question asked next costs only its own tokens.

        `messages` is the conversation as it will be asked, the question's text left empty.
        Cancelling stops within the tile or decoder call under way; the tiles read so far are
        kept (FeatureCache) and the question goes on from them. Returns what the reading
        took (image_ms, tiles_read, prefill_ms): for a stopped one, the tiles it did read
        (None when it read none), so that what the question then reads adds up to the whole."""
        from .model import _Terminated, image_spans

        settings = settings or GenerationSettings()
        model = self.model
        model._check_usable(messages)
        self._settle()
        run_options = new_run_options(cancel)
        timings = Timings()
        try:
            ids, reads = model._prompt(messages, settings, timings)
            if not reads:
                return timings
            spans = image_spans(ids, reads, model.files.image_token_id, model.files.image_seq_len)
            end = int(spans[-1][-1]) + 1
            keys = prompt_keys(ids, reads, spans)[:end]
            start = self._rewind(keys, end)
            if start == end:
                return timings
            embeds = model._embeds(ids[:end], reads, start, run_options, timings, on_progress)
            self._pending = (keys, None)
            assert self._state is not None
            t0 = time.perf_counter()
            self._state.forward(embeds, run_options)
            timings.prefill_ms += (time.perf_counter() - t0) * 1000
        except _Terminated:
            return timings if timings.tiles_read else None
        timings.prompt_tokens, timings.cached_tokens = end, start
        return timings

    # --- inside -----------------------------------------------------------------------

    def _start(self, messages: list[Message], settings: GenerationSettings, run_options: ort.RunOptions,
               started: float, on_progress: "ProgressCallback | None") -> tuple[Answer, DecoderState, np.ndarray]:
        """VisionLanguageModel._start for a kept cache: prefill only what it does not hold."""
        from .model import image_spans

        model = self.model
        self._settle()
        timings = Timings()
        ids, reads = model._prompt(messages, settings, timings)
        spans = image_spans(ids, reads, model.files.image_token_id, model.files.image_seq_len)
        keys = prompt_keys(ids, reads, spans)
        start = self._rewind(keys, len(keys) - 1)  # at least one token is read: its logits answer
        embeds = model._embeds(ids, reads, start, run_options, timings, on_progress)
        self._pending = (keys, None)
        state = self._state
        assert state is not None
        t0 = time.perf_counter()
        logits = state.forward(embeds, run_options)
        timings.prefill_ms += (time.perf_counter() - t0) * 1000
        timings.prompt_tokens, timings.cached_tokens = len(ids), start
        stop_ids = set(model.files.stop_ids) | set(settings.extra_stop_ids)
        answer = Answer(settings, stop_ids, list(ids), model.prompt.streamer(), timings, started)
        self._pending = (keys, answer)
        return answer, state, logits

    def _rewind(self, keys: list, limit: int) -> int:
        """Keep the longest run of cached positions that `keys` starts with (at most `limit`);
        return its length, where reading starts."""
        if self._state is None:
            self._state, self._keys = self.model.new_decoder_state(), []
        keep = common_prefix(self._keys, keys, limit)
        self._state.rewind(keep)
        self._keys = self._keys[:keep]
        return keep

    def _settle(self) -> None:
        """Bring `_keys` up to what the cache holds after the last call (however it ended: the
        answer's tokens fed so far, or the part of the prompt read before a stop), and drop a
        cache grown past `max_bytes`."""
        if self._pending is None or self._state is None:
            return
        keys, answer = self._pending
        self._pending = None
        fed = keys + (answer.token_ids if answer is not None else [])
        self._keys = fed[:self._state.length]
        if len(self._keys) != self._state.length or self._state.nbytes > self.max_bytes:
            self.clear()
