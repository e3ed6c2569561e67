"""The engine's vocabulary: the small, typed API that the CLI, the worker and tests share.

Everything a face needs to talk to the engine lives here, so that a reader can learn the
whole contract from one file. Nothing in here imports ONNX Runtime, Qt or the network.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

Role = Literal["user", "assistant", "system"]


class EngineError(Exception):
    """Base class for every error the engine reports to a user (never a bare traceback)."""


class ModelFolderError(EngineError):
    """The model folder is missing a file, has a mis-named graph, or a config we cannot read."""


class ImageError(EngineError):
    """An image could not be opened or decoded; the message says why, for this one file."""


class Cancelled(EngineError):
    """Generation was stopped through a CancelToken."""


@dataclass(frozen=True)
class Message:
    """One chat turn. Images are placed at the start of the turn, in order, as the window
    and the CLI send them ("User:<image><image>question")."""

    role: Role
    text: str
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate. temperature 0 means greedy (the default: reproducible captions)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    detail: int | None = None  # longest edge in pixels; None = the model's own
    extra_stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= self.temperature < math.inf:  # nan fails both comparisons
            raise ValueError("temperature must be a number >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.repetition_penalty < math.inf:
            raise ValueError("repetition_penalty must be a number > 0")
        if self.detail is not None and self.detail < 1:
            raise ValueError("detail must be a positive number of pixels")


@dataclass
class Timings:
    """Per-stage wall-clock times of one generation, in milliseconds."""

    image_ms: float = 0.0  # preprocessing + vision encoder
    prefill_ms: float = 0.0  # embedding + first decoder pass over the prompt
    decode_ms: float = 0.0  # all later decoder passes
    first_token_ms: float = 0.0  # from the call to the first token
    new_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, already in a kept conversation's cache: not read again
    tiles_read: int = 0  # image tiles through the vision graph (0: all kept from before)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / (self.decode_ms / 1000) if self.decode_ms > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "image_ms": round(self.image_ms, 2),
            "prefill_ms": round(self.prefill_ms, 2),
            "decode_ms": round(self.decode_ms, 2),
            "first_token_ms": round(self.first_token_ms, 2),
            "new_tokens": self.new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "tiles_read": self.tiles_read,
        }


# "length": the model's context (max_position_embeddings) was full before max_new_tokens
StopReason = Literal["stop_token", "max_tokens", "length", "cancelled"]


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. text is the new, complete text since the last event; it is empty
    while a multi-byte UTF-8 character is still incomplete."""

    token_id: int
    text: str


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stop_reason: StopReason
    timings: Timings


@dataclass(frozen=True)
class ModelInfo:
    """What a face shows about the loaded model."""

    name: str
    folder: str
    variant: str
    providers: dict[str, str]  # graph name -> execution provider that actually runs it
    tile_size: int
    longest_edge: int
    image_seq_len: int


class CancelToken:
    """Thread-safe stop flag, checked between tokens and passed to ONNX Runtime so that a
    long vision pass stops too. One token per generation; the worker cancels it from the
    UI thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._run_options: list[object] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            for ro in self._run_options:
                ro.terminate = True  # type: ignore[attr-defined]

    def attach(self, run_options: object) -> None:
        """Register an onnxruntime.RunOptions to terminate on cancel."""
        with self._lock:
            self._run_options.append(run_options)
            if self._event.is_set():
                run_options.terminate = True  # type: ignore[attr-defined]

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("generation was cancelled")


@dataclass
class LoadedImage:
    """An image decoded safely from disk, plus what the user should know about it."""

    image: Image.Image  # RGB, EXIF orientation applied
    path: str
    original_size: tuple[int, int]
    format: str
    notes: list[str] = field(default_factory=list)  # e.g. "animated: first frame used"
