"""Settings: round trip, per-key fallback, unknown keys kept, a broken file never wiped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smolvlm_desktop import settings as settings_mod
from smolvlm_desktop.settings import Settings, SettingsError


def test_missing_file_gives_defaults() -> None:
    loaded = settings_mod.load()
    assert loaded == Settings()
    assert loaded.problems == []


def test_round_trip_keeps_every_value() -> None:
    original = Settings(model="demo", variant="int8", provider="cpu", threads=2, detail=1024,
                        max_new_tokens=77, temperature=0.7, top_p=0.9, top_k=40,
                        repetition_penalty=1.2, seed=5, theme="dark", idle_unload_minutes=3,
                        batch_outputs=("txt", "jsonl"), batch_existing="append",
                        batch_recursive=True, last_folder="/photos", window_geometry="AAA=")
    settings_mod.save(original)
    assert settings_mod.settings_path().is_file()
    loaded = settings_mod.load()
    assert loaded == original
    assert loaded.problems == []


def test_bad_values_fall_back_per_key_and_good_ones_survive() -> None:
    path = settings_mod.settings_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "version": 1, "theme": "purple", "threads": 0, "max_new_tokens": True,
        "temperature": 0.5, "model": "my-model", "batch_outputs": "txt",
    }), encoding="utf-8")
    loaded = settings_mod.load()
    assert (loaded.theme, loaded.threads, loaded.max_new_tokens) == ("system", None, 256)
    assert loaded.batch_outputs == ("txt",)
    assert (loaded.temperature, loaded.model) == (0.5, "my-model")
    joined = "\n".join(loaded.problems)
    for key in ("theme", "threads", "max_new_tokens", "batch_outputs"):
        assert key in joined


def test_unknown_keys_from_a_newer_version_are_kept_on_save() -> None:
    path = settings_mod.settings_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 9, "future_feature": {"a": [1, 2]}, "theme": "light"}),
                    encoding="utf-8")
    loaded = settings_mod.load()
    loaded.set("top_k", 12)
    settings_mod.save(loaded)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["future_feature"] == {"a": [1, 2]}
    assert (data["theme"], data["top_k"]) == ("light", 12)


def test_corrupt_file_is_never_wiped_but_moved_aside_on_save() -> None:
    path = settings_mod.settings_path()
    path.parent.mkdir(parents=True)
    broken = '{"theme": "dark", "threads": 4'  # cut short by a crash
    path.write_text(broken, encoding="utf-8")
    loaded = settings_mod.load()
    assert loaded.theme == "system" and loaded.problems
    assert path.read_text(encoding="utf-8") == broken  # loading alone changes nothing
    settings_mod.save(loaded)
    kept = list(path.parent.glob("settings.unreadable-*.json"))
    assert len(kept) == 1 and kept[0].read_text(encoding="utf-8") == broken
    assert json.loads(path.read_text(encoding="utf-8"))["theme"] == "system"


def test_a_json_list_instead_of_an_object_is_reported() -> None:
    path = settings_mod.settings_path()
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2]", encoding="utf-8")
    loaded = settings_mod.load()
    assert loaded.unreadable_file and loaded.problems


@pytest.mark.parametrize("key,value", [("provider", "tpu"), ("top_p", 0), ("idle_unload_minutes", -1),
                                       ("seed", 1.5), ("unknown_key", 1)])
def test_set_rejects_bad_values_with_a_reason(key: str, value: object) -> None:
    s = Settings()
    with pytest.raises(SettingsError):
        s.set(key, value)
    assert s == Settings()


def test_generation_settings_carry_the_values() -> None:
    s = Settings(max_new_tokens=9, temperature=0.3, top_p=0.8, top_k=5, seed=2,
                 repetition_penalty=1.1, detail=512)
    g = s.generation_settings()
    assert (g.max_new_tokens, g.temperature, g.top_p, g.top_k, g.seed, g.repetition_penalty,
            g.detail) == (9, 0.3, 0.8, 5, 2, 1.1, 512)


def test_save_creates_the_config_dir(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "settings.json"
    settings_mod.save(Settings(theme="dark"), target)
    assert settings_mod.load(target).theme == "dark"
