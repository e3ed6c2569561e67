"""Read a checkpoint's weights (``model.safetensors``) with numpy alone.

Why: the graphs are built on the user's machine from the published weights, and the installed
app carries neither torch nor the safetensors package. The format is simple enough to read
directly: 8 bytes (little-endian u64) giving the length of a JSON header, the header (tensor
name -> dtype, shape and [begin, end) byte offsets into the data that follows), then the raw
little-endian buffers. A sharded checkpoint adds ``model.safetensors.index.json`` mapping each
tensor to its shard.

Every tensor comes back as float32. bfloat16 is the top half of a float32, so widening it is
exact: its 16 bits shifted into the high half of a 32-bit word. float16 widens exactly too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .layout import ExportError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# A header is a few hundred kB even for billions of parameters; more means a damaged file.
MAX_HEADER_BYTES = 100_000_000
# Stored dtype -> (numpy dtype of the stored bytes, bytes per element).
_STORED = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


class _Entry:
    """Where one tensor's bytes are: its file, dtype, shape and absolute byte range."""

    __slots__ = ("path", "dtype", "shape", "start", "end")

    def __init__(self, path: Path, dtype: str, shape: tuple[int, ...], start: int, end: int) -> None:
        self.path, self.dtype, self.shape, self.start, self.end = path, dtype, shape, start, end


def _read_header(path: Path) -> dict[str, _Entry]:
    """The tensors of one .safetensors file; ExportError when the file is not one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ExportError(f"{path}: too short to be a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ExportError(f"{path}: not a safetensors file (header length {length} for {size} bytes)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"{path}: the safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ExportError(f"{path}: the safetensors header is not a JSON object")
    data_start = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise ExportError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if not 0 <= begin <= end or data_start + end > size:
            raise ExportError(f"{path}: tensor {name!r} lies outside the file (truncated download?)")
        entries[name] = _Entry(path, dtype, shape, data_start + begin, data_start + end)
    return entries


class SafetensorsWeights(Mapping[str, np.ndarray]):
    """A checkpoint's tensors by name, each read from disk (and widened) when asked for.

    Lazy on purpose: a 2.2B checkpoint in float32 would not fit next to the graph being built.
    """

    def __init__(self, entries: dict[str, _Entry]) -> None:
        self._entries = entries

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        stored = _STORED.get(entry.dtype)
        if stored is None:
            raise ExportError(f"{entry.path.name}: tensor {name!r} is {entry.dtype}; "
                              f"only {', '.join(_STORED)} weights can be read")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.end - entry.start != count * stored.itemsize:
            raise ExportError(f"{entry.path.name}: tensor {name!r} has {entry.end - entry.start} bytes "
                              f"for shape {list(entry.shape)} in {entry.dtype}")
        with open(entry.path, "rb") as f:
            f.seek(entry.start)
            raw = np.frombuffer(f.read(entry.end - entry.start), dtype=stored, count=count)
        return widen(raw, entry.dtype).reshape(entry.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def dtype(self, name: str) -> str:
        """The stored dtype ("BF16", "F16", "F32"...)."""
        return self._entries[name].dtype

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, without reading it."""
        return self._entries[name].shape


def widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> float32, exactly: bf16 bits go into the high half of a float32 word."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def read_safetensors(folder: Path) -> SafetensorsWeights:
    """The weights of the checkpoint in `folder`: model.safetensors, or the shards its
    model.safetensors.index.json lists."""
    folder = Path(folder)
    if (folder / WEIGHTS_FILE).is_file():
        return SafetensorsWeights(_read_header(folder / WEIGHTS_FILE))
    if not (folder / INDEX_FILE).is_file():
        raise ExportError(f"{folder}: no {WEIGHTS_FILE} (or {INDEX_FILE}) to build the graphs from")
    try:
        weight_map: dict[str, Any] = json.loads((folder / INDEX_FILE).read_text("utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{folder / INDEX_FILE}: unreadable index ({exc})") from None
    entries: dict[str, _Entry] = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if Path(shard).name != shard or not path.is_file():
            raise ExportError(f"{folder}: shard {shard!r} named in {INDEX_FILE} is missing")
        entries.update(_read_header(path))
    return SafetensorsWeights(entries)


def torch_weights(model: Any) -> dict[str, np.ndarray]:
    """A loaded transformers model's tensors as float32 numpy arrays, under the names the
    checkpoint file uses (the exporter's PyTorch path: the same graph builders either way)."""
    return {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
