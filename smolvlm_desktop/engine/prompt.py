"""Chat messages -> token ids, and token ids -> text as it streams.

The chat template is the model's own (Jinja, rendered in a sandbox the way transformers does);
each `<image>` it emits is then expanded into the tile grid the processor produced, exactly as
the transformers Idefics3 processor does. The expansion is built as text and tokenised, not
spliced in as ids, because SmolVLM-Instruct (2.2B) spells `<global-img>` and `<row_r_col_c>` as
plain text rather than single tokens: tokenising the string gives the right ids for both kinds.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import jinja2
import jinja2.ext
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .files import ModelFiles, read_json
from .types import EngineError, Message, ModelFolderError

IMAGE = "<image>"
FAKE_AROUND_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"
# The template variables transformers passes from the tokenizer's special tokens.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                      "mask_token")


def image_placeholder(rows: int, cols: int, seq_len: int) -> str:
    """The text that replaces one `<image>`: a grid of tiles, then the global image; an unsplit
    image (rows = cols = 0) is the global form alone."""
    tile = IMAGE * seq_len
    global_image = f"{FAKE_AROUND_IMAGE}{GLOBAL_IMAGE}{tile}{FAKE_AROUND_IMAGE}"
    if rows == 0 and cols == 0:
        return global_image
    grid = "".join(
        "".join(f"{FAKE_AROUND_IMAGE}<row_{r + 1}_col_{c + 1}>{tile}" for c in range(cols)) + "\n"
        for r in range(rows))
    return f"{grid}\n{global_image}"


def to_template_messages(messages: Sequence[Message]) -> list[dict]:
    """Our Message -> the Hugging Face content form the chat templates expect: the images first,
    then the text (left out when empty, so a picture alone renders as just `<image>`)."""
    out = []
    for m in messages:
        content: list[dict] = [{"type": "image"} for _ in m.images]
        if m.text:
            content.append({"type": "text", "text": m.text})
        out.append({"role": m.role, "content": content})
    return out


def _token_text(value: Any) -> str | None:
    """tokenizer_config stores a token as "text" or as {"content": "text", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens(folder: Path, tokenizer_config: dict) -> dict[str, str]:
    """bos_token, eos_token, ... for the template: tokenizer_config.json, then the older
    special_tokens_map.json for any it does not name."""
    fallback = read_json(folder / "special_tokens_map.json", required=False)
    tokens: dict[str, str] = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = _token_text(tokenizer_config.get(key)) or _token_text(fallback.get(key))
        if text is not None:
            tokens[key] = text
    return tokens


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' tojson: plain JSON, not Jinja's HTML-escaped version."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def template_environment() -> ImmutableSandboxedEnvironment:
    """A sandbox configured like transformers' (chat templates are untrusted code from the Hub)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class PromptBuilder:
    """The model's tokenizer and chat template, and the image-token expansion between them."""

    def __init__(self, tokenizer: Tokenizer, template: str, image_seq_len: int,
                 special: dict[str, str],
                 placeholder: Callable[[int, int, int], str] = image_placeholder) -> None:
        self.tokenizer = tokenizer
        self.placeholder = placeholder  # the family's text for one image (families/)
        self.image_seq_len = image_seq_len
        self.special = special
        try:
            self.template = template_environment().from_string(template)
        except jinja2.TemplateError as exc:
            raise ModelFolderError(f"the model's chat template does not parse: {exc}") from None

    @classmethod
    def from_files(cls, files: ModelFiles) -> "PromptBuilder":
        try:
            tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
            raise ModelFolderError(f"cannot read {files.tokenizer_path}: {exc}") from None
        special = special_tokens(files.folder, files.tokenizer_config)
        return cls(tokenizer, files.chat_template, files.image_seq_len, special,
                   files.family.image_placeholder)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The chat template's text, with one `<image>` per image."""
        for m in messages:
            if IMAGE in m.text:
                raise EngineError(f"a message may not contain the text {IMAGE}: this model reserves "
                                  "it for pictures")
        try:
            return self.template.render(messages=to_template_messages(messages),
                                        add_generation_prompt=add_generation_prompt, **self.special)
        except jinja2.TemplateError as exc:
            raise ModelFolderError(f"the model's chat template failed: {exc}") from None

    def expand(self, text: str, grids: Sequence[tuple[int, int]]) -> str:
        """Each `<image>` of the rendered text -> its image's tile grid of image tokens."""
        pieces = text.split(IMAGE)
        if len(pieces) - 1 != len(grids):
            raise EngineError(f"the prompt has {len(pieces) - 1} images but {len(grids)} were processed")
        out = [pieces[0]]
        for (rows, cols), piece in zip(grids, pieces[1:]):
            out.append(self.placeholder(rows, cols, self.image_seq_len))
            out.append(piece)
        return "".join(out)

    def encode(self, messages: Sequence[Message], grids: Sequence[tuple[int, int]]) -> np.ndarray:
        """int64 [seq] prompt ids, ending with the generation prompt ("Assistant:")."""
        text = self.expand(self.render(messages), grids)
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def streamer(self) -> "TextStreamer":
        return TextStreamer(self.tokenizer)


class TextStreamer:
    """Token ids -> text deltas that never split a UTF-8 character.

    Byte-level BPE tokens can carry part of a character; decoding such a prefix ends in U+FFFD.
    Each push decodes only a short window: from the start of the previous delta (`prefix_offset`,
    kept as context so decoders that drop a leading space, like SentencePiece's, decode the new
    token as it reads inside the text) to the end. The text the window held before this token
    (up to `read_offset`) is subtracted, and the rest is emitted once it no longer ends in an
    incomplete character. The concatenated deltas plus `flush()` equal decoding all the ids.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # the window starts here
        self.read_offset = 0  # everything before this has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _advance(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        now = self._decode(self.ids[self.prefix_offset:])
        if not final and (len(now) <= len(before) or now.endswith("\ufffd")):
            return ""  # nothing new yet, or an incomplete character: wait for the next token
        delta = now[len(before):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def push(self, token_id: int) -> str:
        """The new complete text since the last push ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD, as in a full
        decode)."""
        if self.read_offset == len(self.ids):
            return ""
        return self._advance(final=True)
