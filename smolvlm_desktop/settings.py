"""The window's settings: one validated JSON file under `paths.config_dir()`.

Why so careful: a settings file outlives the version that wrote it. A file written by a newer
version, edited by hand, or cut short by a crash must never cost the user the rest of their
settings (taggui wipes everything on any start-up error). So:

* every key is validated on its own; a bad value falls back to that key's default only, and
  the problem is remembered so the window can say so;
* keys this version does not know are kept and written back unchanged;
* a file that is not JSON at all is moved aside (never deleted) before the first save;
* saves are atomic, so a crash mid-save leaves the old file whole.

This module has no Qt in it, so the CLI and tests can use it as it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from . import paths

SETTINGS_VERSION = 1
PROVIDERS = ("auto", "cpu", "cuda", "dml", "coreml")
THEMES = ("system", "light", "dark")
EXISTING_POLICIES = ("skip", "overwrite", "append")


class SettingsError(ValueError):
    """A value that cannot be used for a key; the message says which and why."""


def settings_path() -> Path:
    return paths.config_dir() / "settings.json"


# --- validators: each takes the raw JSON value and returns a clean one or raises ------------

def _optional_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SettingsError("expected text")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise SettingsError(f"expected one of {', '.join(options)}")
        return value
    return check


def _int_range(low: int, high: int, optional: bool = False) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        # bool is an int in Python, but `true` is never a valid count
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SettingsError(f"expected a whole number from {low} to {high}")
        return value
    return check


def _float_range(low: float, high: float, low_open: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SettingsError("expected a number")
        too_low = value <= low if low_open else value < low
        if too_low or value > high:
            raise SettingsError(f"expected a number from {low} to {high}")
        return float(value)
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingsError("expected true or false")
    return value


def _outputs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SettingsError("expected a list of format names")
    return tuple(dict.fromkeys(value))  # keep order, drop duplicates


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise SettingsError("expected text")
    return value


VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "model": _optional_text,
    "variant": _optional_text,
    "provider": _choice(PROVIDERS),
    "threads": _int_range(1, 256, optional=True),
    "detail": _int_range(64, 8192, optional=True),
    "max_new_tokens": _int_range(1, 8192),
    "temperature": _float_range(0.0, 5.0),
    "top_p": _float_range(0.0, 1.0, low_open=True),
    "top_k": _int_range(0, 100_000),
    "repetition_penalty": _float_range(0.0, 10.0, low_open=True),
    "seed": _int_range(0, 2**63 - 1, optional=True),
    "theme": _choice(THEMES),
    "idle_unload_minutes": _int_range(0, 24 * 60),
    "batch_outputs": _outputs,
    "batch_existing": _choice(EXISTING_POLICIES),
    "batch_recursive": _bool,
    "last_folder": _text,
    "window_geometry": _text,
    "window_state": _text,
}


@dataclass
class Settings:
    """Everything the window remembers. Field names are the JSON keys."""

    model: str | None = None  # installed name or folder; None = the installed default
    variant: str | None = None  # None = the engine's choice (int8 on CPU)
    provider: str = "auto"
    threads: int | None = None
    detail: int | None = None  # longest edge in px; None = the model's own
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    theme: str = "system"
    idle_unload_minutes: int = 15  # 0 = keep the model loaded
    batch_outputs: tuple[str, ...] = ("txt",)
    batch_existing: str = "skip"
    batch_recursive: bool = False
    last_folder: str = ""
    window_geometry: str = ""  # base64 of QWidget.saveGeometry()
    window_state: str = ""  # base64 of QMainWindow.saveState()
    # Not saved as keys: what load() found, so the window can tell the user.
    problems: list[str] = field(default_factory=list, repr=False, compare=False)
    unknown: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    unreadable_file: bool = field(default=False, repr=False, compare=False)

    def generation_settings(self):  # -> GenerationSettings (imported lazily: engine types)
        """The engine's GenerationSettings for these values."""
        from .engine.types import GenerationSettings

        return GenerationSettings(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, seed=self.seed, repetition_penalty=self.repetition_penalty,
            detail=self.detail,
        )

    def set(self, key: str, value: Any) -> None:
        """Set one key through its validator (raises SettingsError with the reason)."""
        if key not in VALIDATORS:
            raise SettingsError(f"unknown setting {key!r}")
        if key == "batch_outputs" and isinstance(value, tuple):
            value = list(value)
        setattr(self, key, VALIDATORS[key](value))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.unknown)
        for f in _saved_fields():
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        data["version"] = SETTINGS_VERSION
        return data


def _saved_fields() -> list:
    return [f for f in fields(Settings) if f.name in VALIDATORS]


def from_json(data: Any) -> Settings:
    """Build Settings from parsed JSON, one key at a time: a bad key costs only itself."""
    settings = Settings()
    if not isinstance(data, dict):
        settings.problems.append("the settings file does not hold a JSON object; defaults used")
        settings.unreadable_file = True
        return settings
    for key, value in data.items():
        if key == "version":
            continue
        if key not in VALIDATORS:
            settings.unknown[key] = value  # from a newer version, or a user's note: keep it
            continue
        try:
            settings.set(key, value)
        except SettingsError as exc:
            settings.problems.append(f"{key}: {exc} (got {value!r}); the default is used")
    return settings


def load(path: Path | None = None) -> Settings:
    """Read the settings file; a missing file gives defaults, a broken one is reported."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        settings = Settings(unreadable_file=True)
        settings.problems.append(f"could not read {path}: {exc.strerror or exc}; defaults used")
        return settings
    try:
        data = json.loads(text)
    except ValueError as exc:
        settings = Settings(unreadable_file=True)
        settings.problems.append(f"{path.name} is not valid JSON ({exc}); defaults used")
        return settings
    return from_json(data)


def save(settings: Settings, path: Path | None = None) -> None:
    """Write atomically. A file we could not parse is first moved aside, never overwritten."""
    from .library.atomic import atomic_write_text

    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings.unreadable_file and path.exists():
        aside = path.with_name(f"{path.stem}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        path.replace(aside)
        settings.problems.append(f"the unreadable settings file was kept as {aside.name}")
        settings.unreadable_file = False
    text = json.dumps(settings.to_json(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    atomic_write_text(path, text)
