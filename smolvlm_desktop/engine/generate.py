"""The decode loop: prefill once, then one token at a time with the KV cache.

The decoder graph returns `present.*` tensors that already contain the whole cache; they are
passed straight back as the next `past_key_values.*` without copying in Python. Where the
decoder can (the exporter's), the cache is instead written in place in buffers bound as both
(InPlaceDecoderState), so ONNX Runtime does not copy it either. The attention
mask grows by one column per token (a [1, 1] mask while decoding garbles the output) and
positions are the running count of attended tokens, as transformers computes them.

Several conversations can decode together (BatchDecoder) after each was prefilled alone, on
decoders that give a row the same logits in a batch as alone (decodes_batch_invariantly);
`Answer` holds one conversation's stop rules and streamed text for either loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import onnxruntime as ort

from .runtime import GraphSession, numpy_dtype
from .types import CancelToken, GenerationResult, GenerationSettings, StopReason, Timings, TokenEvent

if TYPE_CHECKING:
    from .prompt import TextStreamer


# An optional decoder input (the exporter's graphs have it, with a default of 0: every
# position): how many of the last positions get logits. A prefill needs only the last.
LOGITS_TO_KEEP = "logits_to_keep"
# From how many new positions a read goes through the prompt decoder, where the model has one
# (engine/files.py, PROMPT_GRAPH_SUFFIX). Measured on SmolVLM-256M (EPYC, AVX-512 VNNI): it is
# faster from a few rows on, but it holds a second copy of the decoder's weights (~160 MB on 256M,
# opened on first use), worth it for a photo of several tiles (878 tokens: 13 tiles), not for
# a one-tile picture (79 tokens) or a follow-up question, which stay on the one decoder.
PROMPT_GRAPH_MIN_TOKENS = 256


@dataclass
class CacheLayout:
    """What the decoder's past tensors look like, read from the graph (config as back-up)."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: str

    @classmethod
    def from_graph(cls, decoder: GraphSession, text_config: dict) -> "CacheLayout":
        keys = [i for i in decoder.session.get_inputs()
                if i.name.startswith("past_key_values.") and i.name.endswith(".key")]
        shape = keys[0].shape  # [batch, kv_heads, past, head_dim]; symbolic dims are strings
        heads = text_config.get("num_attention_heads", 1)
        kv_heads = shape[1] if isinstance(shape[1], int) else text_config.get(
            "num_key_value_heads", heads)
        head_dim = shape[3] if isinstance(shape[3], int) else text_config.get(
            "head_dim", text_config["hidden_size"] // heads)
        return cls(num_layers=len(keys), kv_heads=int(kv_heads), head_dim=int(head_dim),
                   dtype=numpy_dtype(keys[0].type))


class DecoderState:
    """The KV cache, attention mask and position of one conversation being generated.

    `prompt_decoder`, when given, opens the model's prompt decoder: a read of at least
    PROMPT_GRAPH_MIN_TOKENS positions goes through it (same inputs, outputs and cache), every
    other call through `decoder`."""

    def __init__(self, decoder: GraphSession, layout: CacheLayout,
                 prompt_decoder: Callable[[], GraphSession] | None = None) -> None:
        self.decoder = decoder
        self.prompt_decoder = prompt_decoder
        self.layout = layout
        empty = np.zeros((1, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        self.past: dict[str, Any] = {}
        for i in range(layout.num_layers):
            self.past[f"past_key_values.{i}.key"] = empty
            self.past[f"past_key_values.{i}.value"] = empty
        self.length = 0
        self._present_names = [n for n in decoder.output_names if n.startswith("present.")]
        self._outputs = ["logits", *self._present_names]
        self._last_only = ({LOGITS_TO_KEEP: np.array(1, dtype=np.int64)}
                           if LOGITS_TO_KEEP in decoder.optional_inputs else {})

    def _feeds(self, embeds: np.ndarray) -> dict[str, np.ndarray]:
        """Embeds, mask and positions for the next `embeds` [1, seq, hidden] (not the cache)."""
        total = self.length + embeds.shape[1]
        feeds = {"inputs_embeds": np.ascontiguousarray(embeds),
                 "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": np.arange(self.length, total, dtype=np.int64)[None, :]}
        if embeds.shape[1] > 1:  # a single position has nothing to cut (and IOBinding refuses the input)
            feeds.update(self._last_only)
        return feeds

    def forward(self, embeds: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """Feed `embeds` [1, seq, hidden]; return the logits of the last position [vocab] (float32)."""
        total = self.length + embeds.shape[1]
        decoder = self.decoder
        if self.prompt_decoder is not None and embeds.shape[1] >= PROMPT_GRAPH_MIN_TOKENS:
            decoder = self.prompt_decoder()
        logits, *present = decoder.run({**self._feeds(embeds), **self.past}, run_options, self._outputs)
        self.past.update(pasts_from_presents(self._present_names, present))
        self.length = total
        return logits[0, -1].astype(np.float32, copy=False)

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on, as if only the first `length` were fed
        (a kept conversation going back to before a turn; the next forward overwrites them)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind a cache of {self.length} positions to {length}")
        self.past = {name: value[:, :, :length] for name, value in self.past.items()}
        self.length = length

    @property
    def position_bytes(self) -> int:
        """Bytes the cache takes per position (keys and values of every layer)."""
        layout = self.layout
        return layout.num_layers * 2 * layout.kv_heads * layout.head_dim * np.dtype(layout.dtype).itemsize

    @property
    def nbytes(self) -> int:
        """Memory the cache holds now."""
        return self.length * self.position_bytes


class BoundCache:
    """KV-cache buffers [batch, kv_heads, capacity, head_dim] that the decoder writes in place.

    Each buffer is bound (IOBinding) as both a `past_key_values.*` input and the matching
    `present.*` output, so a step writes only its new positions. The copying way hands ONNX
    Runtime the whole cache and gets a grown copy back at every step: a few MB per token and
    row. The buffers grow, with one copy, when full. Only for decoders that
    `updates_cache_in_place` says handle it (the exporter's GroupQueryAttention decoder)."""

    GROWTH = 128  # positions added at least when the buffers are full

    def __init__(self, decoder: GraphSession, past: dict[str, np.ndarray], capacity: int) -> None:
        self.decoder = decoder
        self.buffers: dict[str, np.ndarray] = {}
        self._binding: Any = None
        self._place(past, max(capacity, next(iter(past.values())).shape[2]))

    @property
    def capacity(self) -> int:
        return next(iter(self.buffers.values())).shape[2]

    def run(self, feeds: dict[str, np.ndarray], run_options: ort.RunOptions | None) -> np.ndarray:
        """Run one decoder call on `feeds` (embeds, mask, positions); return its logits."""
        total = feeds["attention_mask"].shape[1]
        if total > self.capacity:
            length = total - feeds["inputs_embeds"].shape[1]
            self._place(self.views(length), max(total, self.capacity + max(self.GROWTH, self.capacity // 2)))
        for name, value in feeds.items():  # the caller keeps `feeds` alive: bound, not copied
            self._binding.bind_cpu_input(name, value)
        self._binding.bind_output("logits")  # unbound again: its shape changes from prefill to steps
        self.decoder.run_bound(self._binding, run_options)
        return self._binding.get_outputs()[0].numpy()

    def store(self, past: dict[str, np.ndarray]) -> None:
        """Hold `past` (a cache computed the copying way), growing the buffers if needed."""
        length = next(iter(past.values())).shape[2]
        if length + 1 > self.capacity:
            self._place(past, length + self.GROWTH)
            return
        for name, value in past.items():
            self.buffers[name][:, :, :length] = value

    def views(self, length: int) -> dict[str, np.ndarray]:
        """The first `length` positions of each buffer, named as past inputs (no copy)."""
        return {name: buffer[:, :, :length] for name, buffer in self.buffers.items()}

    def keep(self, rows: np.ndarray, length: int) -> None:
        """Go on with these rows only (one copy)."""
        self._place({name: value[rows] for name, value in self.views(length).items()}, self.capacity)

    def _place(self, past: dict[str, np.ndarray], capacity: int) -> None:
        """(Re)make the buffers with room for `capacity` positions, holding `past`, and bind them."""
        binding = self.decoder.session.io_binding()
        binding.bind_output("logits")  # first, so that it is get_outputs()[0]
        buffers = {}
        for name, value in past.items():
            batch, heads, length, dim = value.shape
            buffer = np.zeros((batch, heads, capacity, dim), dtype=value.dtype)
            buffer[:, :, :length] = value
            buffers[name] = buffer  # kept here: the OrtValue does not keep the array alive
            bound = ort.OrtValue.ortvalue_from_numpy(buffer)
            binding.bind_ortvalue_input(name, bound)
            binding.bind_ortvalue_output("present." + name[len("past_key_values."):], bound)
        self.buffers, self._binding = buffers, binding


class InPlaceDecoderState(DecoderState):
    """A DecoderState whose cache is a BoundCache while it decodes: nothing copied per token
    (256M int8: 0.3-0.6 ms less per token of ~6.5-7.5, in A/B runs of the engine's loop)."""

    def __init__(self, decoder: GraphSession, layout: CacheLayout, capacity: int = BoundCache.GROWTH,
                 prompt_decoder: Callable[[], GraphSession] | None = None) -> None:
        super().__init__(decoder, layout, prompt_decoder)
        self.cache = BoundCache(decoder, self.past, capacity)

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def forward(self, embeds: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        if embeds.shape[1] > 1:
            # A prompt goes the copying way, once: an IOBinding cannot set an input that has a
            # default (logits_to_keep), and the LM head over every prompt position would cost more.
            logits = super().forward(embeds, run_options)
            self.cache.store(self.past)
        else:
            logits = self.cache.run(self._feeds(embeds), run_options)[0, -1].astype(np.float32, copy=False)
            self.length += 1
        self.past = self.cache.views(self.length)
        return logits

    def rewind(self, length: int) -> None:
        super().rewind(length)
        self.past = self.cache.views(length)

    @property
    def nbytes(self) -> int:
        """The bound buffers, room to grow included."""
        return sum(buffer.nbytes for buffer in self.cache.buffers.values())


def updates_cache_in_place(decoder: GraphSession, layout: CacheLayout, hidden: int) -> bool:
    """Whether InPlaceDecoderState gives exactly the logits and cache of DecoderState.

    Measured, not guessed from op names: a 3-token prompt and one step both ways. A decoder
    that concatenates its cache (the traced and official graphs) cannot write into the bound
    buffers and fails the probe; so does any provider but the CPU, whose buffers these are."""
    if decoder.provider != "cpu":
        return False
    rng = np.random.default_rng(1)
    prompt = rng.standard_normal((1, 3, hidden)).astype(layout.dtype)
    step = rng.standard_normal((1, 1, hidden)).astype(layout.dtype)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a refusal is an answer here, not an error for the log
    copying = DecoderState(decoder, layout)
    try:
        in_place = InPlaceDecoderState(decoder, layout, capacity=8)
        for embeds in (prompt, step):
            want, got = copying.forward(embeds, quiet), in_place.forward(embeds, quiet)
            if not np.array_equal(want, got):
                return False
    except Exception:  # noqa: BLE001 - ORT refuses the bound buffers: a graph that copies its cache
        return False
    return all(np.array_equal(copying.past[name], in_place.past[name]) for name in copying.past)


def pasts_from_presents(names: Sequence[str], presents: Sequence[Any]) -> dict[str, Any]:
    """The decoder's `present.*` outputs, named as the next call's `past_key_values.*` inputs."""
    return {"past_key_values." + name[len("present."):]: value for name, value in zip(names, presents)}


class BatchDecoder:
    """Several conversations decoding together, one token each per decoder call.

    Each was prefilled alone (DecoderState); here their caches are left-padded to the
    longest, with those columns masked out (attention_mask 0), and each row keeps its own
    positions, so a row sees exactly what it would see alone. Why: one decoding step reads
    all the weights whatever the batch, so four rows cost about 1.5 steps (256M int8: 11.1 ms
    for 4 rows, 7.5 ms for 1). Use it only where `decodes_batch_invariantly` holds.
    """

    def __init__(self, states: Sequence[DecoderState]) -> None:
        self.decoder = states[0].decoder
        self._present_names = states[0]._present_names
        self._outputs = states[0]._outputs
        longest = max(s.length for s in states)
        self.mask = np.zeros((len(states), longest), dtype=np.int64)
        for row, state in enumerate(states):
            self.mask[row, longest - state.length:] = 1
        self.positions = np.array([s.length for s in states], dtype=np.int64)
        self.past = {name: np.concatenate([_left_pad(s.past[name], longest - s.length) for s in states])
                     for name in states[0].past}
        # In place too, when the rows' own caches were (the decoder passed that probe).
        in_place = all(isinstance(s, InPlaceDecoderState) for s in states)
        self.cache = BoundCache(self.decoder, self.past, longest + BoundCache.GROWTH) if in_place else None

    def forward(self, embeds: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """Feed one token per row, `embeds` [rows, 1, hidden]; return logits [rows, vocab] (float32)."""
        self.mask = np.concatenate([self.mask, np.ones((len(self.mask), 1), dtype=np.int64)], axis=1)
        feeds = {"inputs_embeds": np.ascontiguousarray(embeds), "attention_mask": self.mask,
                 "position_ids": np.ascontiguousarray(self.positions[:, None])}
        if self.cache is not None:
            logits = self.cache.run(feeds, run_options)
            self.past = self.cache.views(self.mask.shape[1])
        else:
            logits, *present = self.decoder.run({**feeds, **self.past}, run_options, self._outputs)
            self.past.update(pasts_from_presents(self._present_names, present))
        self.positions = self.positions + 1
        return logits[:, -1].astype(np.float32, copy=False)

    def keep(self, rows: Sequence[int]) -> None:
        """Go on with these rows only (the others have finished)."""
        index = np.asarray(rows, dtype=np.int64)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.cache is not None:
            self.cache.keep(index, self.mask.shape[1])
            self.past = self.cache.views(self.mask.shape[1])
        else:
            self.past = {name: value[index] for name, value in self.past.items()}


def _left_pad(past: np.ndarray, columns: int) -> np.ndarray:
    """[batch, heads, length, dim] with `columns` zero positions in front."""
    if columns == 0:
        return past
    return np.pad(past, ((0, 0), (0, 0), (columns, 0), (0, 0)))


def decodes_batch_invariantly(decoder: GraphSession, layout: CacheLayout, hidden: int) -> bool:
    """Whether a conversation's logits are the same decoded alone or beside others.

    Not true of every graph: the official int8 files quantise activations with one scale per
    tensor, so a batch-mate's range changes this row's numbers (256M: logits moved by up to 17)
    and a caption would depend on the images next to it. Measured, not guessed from op names:
    two rows of very different magnitude, each compared with itself alone."""
    rng = np.random.default_rng(0)
    past_len = 3
    embeds = (rng.standard_normal((2, 1, hidden)) * np.array([0.05, 20.0])[:, None, None]).astype(layout.dtype)
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((2, past_len + 1), dtype=np.int64),
             "position_ids": np.full((2, 1), past_len, dtype=np.int64)}
    for i in range(layout.num_layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                (2, layout.kv_heads, past_len, layout.head_dim)).astype(layout.dtype)
    together = decoder.run(feeds, None, ["logits"])[0].astype(np.float32)
    for row in range(2):
        alone = decoder.run({k: v[row:row + 1] for k, v in feeds.items()}, None, ["logits"])[0]
        scale = max(1.0, float(np.abs(alone).max()))
        if float(np.abs(together[row] - alone[0]).max()) > 1e-3 * scale:
            return False
    return True


@dataclass
class Answer:
    """One conversation's answer as its tokens are chosen: the stop rules and the streamed
    text, shared by the one-conversation loop and the batched one."""

    settings: GenerationSettings
    stop_ids: set[int]
    seen: list[int]  # prompt ids, then every chosen token (for the repetition penalty)
    streamer: "TextStreamer"
    timings: Timings
    started: float  # time.perf_counter() when this answer was asked for
    token_ids: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    stop_reason: StopReason = "max_tokens"
    done: bool = False
    room: int | None = None  # new tokens that fit in the model's positions after the prompt

    def __post_init__(self) -> None:
        self.chooser = TokenChooser(self.settings)

    def step(self, logits: np.ndarray) -> TokenEvent | None:
        """Choose the next token; its event, or None when a stop token ends the answer."""
        token = self.chooser.choose(logits, self.seen)
        if not self.timings.first_token_ms:
            self.timings.first_token_ms = (time.perf_counter() - self.started) * 1000
        if token in self.stop_ids:
            self.stop_reason, self.done = "stop_token", True
            return None
        self.token_ids.append(token)
        self.seen.append(token)
        self.timings.new_tokens = len(self.token_ids)
        delta = self.streamer.push(token)
        self.parts.append(delta)
        self.done = len(self.token_ids) >= self.settings.max_new_tokens
        if not self.done and self.room is not None and len(self.token_ids) >= self.room:
            self.stop_reason, self.done = "length", True  # the next token has no position left
        return TokenEvent(token, delta)

    def cancel(self) -> None:
        self.stop_reason, self.done = "cancelled", True

    def finish(self) -> tuple[GenerationResult, TokenEvent | None]:
        """The result, and an event for text the streamer still held back (if any)."""
        tail = self.streamer.flush()
        event = None
        if tail:
            self.parts.append(tail)
            if self.token_ids:
                event = TokenEvent(self.token_ids[-1], tail)
        return GenerationResult("".join(self.parts), self.token_ids, self.stop_reason, self.timings), event


class TokenChooser:
    """Greedy or sampled choice of the next token, with the usual transformers-style processors."""

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def choose(self, logits: np.ndarray, seen_ids: Sequence[int]) -> int:
        s = self.settings
        scores = logits
        if s.repetition_penalty != 1.0 and len(seen_ids):
            scores = apply_repetition_penalty(scores, seen_ids, s.repetition_penalty)
        if s.temperature == 0:
            return int(np.argmax(scores))
        scores = scores.astype(np.float64) / s.temperature
        if s.top_k:
            scores = keep_top_k(scores, s.top_k)
        if s.top_p < 1.0:
            scores = keep_top_p(scores, s.top_p)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        return int(self.rng.choice(len(probs), p=probs))


def apply_repetition_penalty(scores: np.ndarray, seen_ids: Sequence[int], penalty: float) -> np.ndarray:
    """As in transformers (CTRL paper): divide positive scores, multiply negative ones."""
    scores = scores.copy()
    ids = np.unique(np.asarray(seen_ids, dtype=np.int64))
    picked = scores[ids]
    scores[ids] = np.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def keep_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    if k >= scores.size:
        return scores
    threshold = np.partition(scores, -k)[-k]
    return np.where(scores < threshold, -np.inf, scores)


def keep_top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of tokens whose probability adds up to at least p."""
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    probs = np.exp(sorted_scores - sorted_scores[0])
    probs /= probs.sum()
    cumulative = np.cumsum(probs)
    keep = cumulative - probs < p  # always keeps the first token
    out = np.full_like(scores, -np.inf)
    out[order[keep]] = scores[order[keep]]
    return out


def new_run_options(cancel: CancelToken | None) -> ort.RunOptions:
    """RunOptions that the cancel token can terminate from another thread."""
    options = ort.RunOptions()
    if cancel is not None:
        cancel.attach(options)
    return options
