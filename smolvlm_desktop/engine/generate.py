"""The decode loop: prefill once, then one token at a time with the KV cache.

The decoder graph returns `present.*` tensors that already contain the whole cache; they are
passed straight back as the next `past_key_values.*` without copying in Python. The attention
mask grows by one column per token (a [1, 1] mask while decoding garbles the output) and
positions are the running count of attended tokens, as transformers computes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from .runtime import GraphSession, numpy_dtype
from .types import CancelToken, GenerationSettings


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
    """The KV cache, attention mask and position of one conversation being generated."""

    def __init__(self, decoder: GraphSession, layout: CacheLayout) -> None:
        self.decoder = decoder
        self.layout = layout
        empty = np.zeros((1, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        self.past: dict[str, Any] = {}
        for i in range(layout.num_layers):
            self.past[f"past_key_values.{i}.key"] = empty
            self.past[f"past_key_values.{i}.value"] = empty
        self.length = 0
        self._present_names = [n for n in decoder.output_names if n.startswith("present.")]
        self._outputs = ["logits", *self._present_names]

    def forward(self, embeds: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """Feed `embeds` [1, seq, hidden]; return the logits of the last position [vocab] (float32)."""
        seq = embeds.shape[1]
        total = self.length + seq
        feeds = {
            "inputs_embeds": embeds,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(self.length, total, dtype=np.int64)[None, :],
            **self.past,
        }
        logits, *present = self.decoder.run(feeds, run_options, self._outputs)
        for name, value in zip(self._present_names, present):
            self.past["past_key_values." + name[len("present."):]] = value
        self.length = total
        return logits[0, -1].astype(np.float32, copy=False)


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
