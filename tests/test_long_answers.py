"""An answer longer than the model's context stops at it with stop_reason "length" and keeps
its text (issue 12 item 13), instead of running the decoder past its last position."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from smolvlm_desktop.cli import EXIT_OK, main
from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import GenerationSettings, Message

HUGE = 1_000_000_000
IMAGE = Image.new("RGB", (40, 32), (200, 30, 30))


def short_context_copy(tiny_model_dir: Path, folder: Path, positions: int) -> Path:
    """The tiny model with a smaller max_position_embeddings in its config (its graphs reach
    further, so the config's limit is the one that counts)."""
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["text_config"]["max_position_embeddings"] = positions
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def prompt_tokens(model: VisionLanguageModel) -> int:
    result = model.generate([Message("user", "Describe.", images=(IMAGE,))],
                            GenerationSettings(max_new_tokens=1))
    return result.timings.prompt_tokens


def test_an_answer_stops_at_the_context_and_keeps_its_text(tiny_model, tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    room = 12
    folder = short_context_copy(tiny_model_dir, tmp_path / "short", prompt_tokens(tiny_model) + room)
    model = VisionLanguageModel.load(folder, variant="fp32", provider="cpu", threads=1)
    try:
        conversation = [Message("user", "Describe.", images=(IMAGE,))]
        result = model.generate(conversation, GenerationSettings(max_new_tokens=HUGE))
        assert result.stop_reason == "length" and len(result.token_ids) == room
        assert result.text.strip()
        together = model.generate_many([conversation, conversation],
                                       GenerationSettings(max_new_tokens=HUGE))
        assert [r.stop_reason for r in together] == ["length", "length"]
        assert [r.token_ids for r in together] == [result.token_ids] * 2
        assert model.generate(conversation, GenerationSettings(max_new_tokens=room)).stop_reason \
            == "max_tokens", "an answer that just fits is not cut"
    finally:
        model.close()


@pytest.mark.slow
def test_the_cli_with_a_huge_max_new_tokens_writes_the_caption(tmp_path: Path, capsys) -> None:
    """At the demo model's real limit (8,192 positions: ~7,900 tokens, a few seconds)."""
    image = tmp_path / "red.png"
    IMAGE.save(image)
    code = main(["caption", str(image), "--model", "demo", "--threads", "1", "--json",
                 "--write", "txt", "--max-new-tokens", str(HUGE)])
    row = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK and row["ok"], row
    assert image.with_suffix(".txt").read_text(encoding="utf-8") == row["text"] != ""
