"""Chat messages -> token ids, and token ids -> text as it streams.

The chat template is the model's own (Jinja, rendered in a sandbox the way transformers does);
each `<image>` it emits is then expanded into the tile grid the processor produced. The
expansion is built as text and tokenised, not spliced in as ids, because SmolVLM-Instruct (2.2B)
spells `<global-img>` and `<row_r_col_c>` as plain text rather than single tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import jinja2
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .files import ModelFiles
from .types import Message, ModelFolderError

IMAGE = "<image>"
FAKE_AROUND_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def image_placeholder(rows: int, cols: int, seq_len: int) -> str:
    """The text that replaces one `<image>`: a grid of tiles, then the global image."""
    tile = IMAGE * seq_len
    if rows == 0 and cols == 0:
        return f"{FAKE_AROUND_IMAGE}{GLOBAL_IMAGE}{tile}{FAKE_AROUND_IMAGE}"
    parts = []
    for r in range(rows):
        for c in range(cols):
            parts.append(f"{FAKE_AROUND_IMAGE}<row_{r + 1}_col_{c + 1}>{tile}")
        parts.append("\n")
    parts.append(f"\n{FAKE_AROUND_IMAGE}{GLOBAL_IMAGE}{tile}{FAKE_AROUND_IMAGE}")
    return "".join(parts)


def to_template_messages(messages: Sequence[Message]) -> list[dict]:
    """Our Message -> the Hugging Face content form the chat templates expect."""
    out = []
    for m in messages:
        content: list[dict] = [{"type": "image"} for _ in m.images]
        if m.text:
            content.append({"type": "text", "text": m.text})
        out.append({"role": m.role, "content": content})
    return out


class PromptBuilder:
    def __init__(self, tokenizer: Tokenizer, template: str, image_seq_len: int,
                 special: dict[str, str | None]) -> None:
        self.tokenizer = tokenizer
        self.image_seq_len = image_seq_len
        self.special = special
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise_template_error
        try:
            self.template = env.from_string(template)
        except jinja2.TemplateError as exc:
            raise ModelFolderError(f"the model's chat template does not parse: {exc}") from None

    @classmethod
    def from_files(cls, files: ModelFiles) -> "PromptBuilder":
        try:
            tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
            raise ModelFolderError(f"cannot read {files.tokenizer_path}: {exc}") from None
        cfg = files.tokenizer_config
        special = {k: _token_content(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token",
                                                             "unk_token")}
        return cls(tokenizer, files.chat_template, files.image_seq_len, special)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=to_template_messages(messages),
                                        add_generation_prompt=add_generation_prompt, **self.special)
        except jinja2.TemplateError as exc:
            raise ModelFolderError(f"the model's chat template failed: {exc}") from None

    def expand(self, text: str, grids: Sequence[tuple[int, int]]) -> str:
        pieces = text.split(IMAGE)
        if len(pieces) - 1 != len(grids):
            raise ValueError(f"the prompt has {len(pieces) - 1} images but {len(grids)} were processed")
        out = [pieces[0]]
        for (rows, cols), piece in zip(grids, pieces[1:]):
            out.append(image_placeholder(rows, cols, self.image_seq_len))
            out.append(piece)
        return "".join(out)

    def encode(self, messages: Sequence[Message], grids: Sequence[tuple[int, int]]) -> np.ndarray:
        text = self.expand(self.render(messages), grids)
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def streamer(self) -> "TextStreamer":
        return TextStreamer(self.tokenizer)


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


class TextStreamer:
    """Turns token ids into text deltas that never split a UTF-8 character.

    Byte-level BPE tokens can carry half a character; decoding such a prefix yields U+FFFD.
    Each push decodes a short window of recent tokens and emits only what became stable, so the
    cost per token stays small however long the answer grows.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.window_start = 0  # ids before this are already emitted and final
        self.emitted_in_window = 0  # characters of the window's text already emitted

    def _window_text(self) -> str:
        return self.tokenizer.decode(self.ids[self.window_start:], skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self._window_text()
        if text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        delta = text[self.emitted_in_window:]
        self.emitted_in_window = len(text)
        if len(self.ids) - self.window_start >= 8:
            # The window ends on a whole character, so byte-level text can be cut here.
            self.window_start = len(self.ids)
            self.emitted_in_window = 0
        return delta

    def flush(self) -> str:
        text = self._window_text()
        delta = text[self.emitted_in_window:]
        self.emitted_in_window = len(text)
        return delta
