"""Vision features kept by image content, so that no image is read twice.

Reading an image (its tiles through the vision graph) is most of the wait before an answer:
3.4 s of 4.7 s for a 13-tile photo on SmolVLM-256M int8. The same pixels at the same detail
through the same graph always give the same features, so they are kept here, keyed by a hash
of the decoded pixels, the detail and the model variant: a second question, another chat on
the same photo, a second prompt in a batch or a re-run then read no tiles at all.

Bounded by bytes, least recently used first out (a 13-tile image on 256M is about 2 MB).
Tiles already read of an image not yet finished (a read-ahead that yielded to the person)
are kept too (`partial`), so that the work is never done twice. Plain data: no ONNX Runtime.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # some 30 photos of 13 tiles on 256M; a batch fills it too


def image_digest(image: Image.Image) -> str:
    """A hash of what the processor sees of an image: its mode, size, transparency and pixels.

    Hashing the decoded pixels (not a path or the file's bytes) means a re-encoded or renamed
    copy of the same picture is the same image, and an edited file is a new one. Cost: about
    10 ms for a 12-megapixel photo, against seconds of vision."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}|{image.size}|{image.info.get('transparency')!r}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ImageFeatures:
    """One image as the prompt and the decoder need it: its tile grid and its vision features."""

    grid: tuple[int, int]  # (rows, cols); (0, 0) when not split
    features: np.ndarray  # [tiles, image_seq_len, hidden]


class FeatureCache:
    """LRU of ImageFeatures by key, at most `max_bytes` of features (0 keeps nothing)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, ImageFeatures] = OrderedDict()
        self._partial: dict[str, list[np.ndarray]] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ImageFeatures | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: ImageFeatures) -> None:
        """Keep `entry` (and forget the partial tiles it was made of)."""
        self._partial.pop(key, None)
        if key in self._entries:
            self.nbytes -= self._entries.pop(key).features.nbytes
        if entry.features.nbytes > self.max_bytes:
            return
        self._entries[key] = entry
        self.nbytes += entry.features.nbytes
        while self.nbytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.nbytes -= oldest.features.nbytes

    MAX_PARTIAL = 4  # images kept half-read at once (a read-ahead per chat that yielded)

    def partial(self, key: str) -> list[np.ndarray]:
        """The tiles of `key` read so far (a list the reader appends to)."""
        if key not in self._partial and len(self._partial) >= self.MAX_PARTIAL:
            del self._partial[next(iter(self._partial))]
        return self._partial.setdefault(key, [])

    def clear(self) -> None:
        self._entries.clear()
        self._partial.clear()
        self.nbytes = 0
