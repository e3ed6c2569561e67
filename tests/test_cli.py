"""The command line, run in-process on the bundled tiny model with real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main


def write_photo(path: Path, seed: int = 0, size: tuple[int, int] = (120, 90)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_caption_json_one_object_per_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_photo(tmp_path / "a.jpg", 1)
    b = write_photo(tmp_path / "b.png", 2)
    code = main(["caption", str(a), str(b), "--model", "demo", "--json", "--max-new-tokens", "6",
                 "--threads", "1"])
    rows = json_lines(capsys.readouterr().out)
    assert code == EXIT_OK
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "b.png"]
    for row in rows:
        assert row["ok"] is True and row["error"] is None
        assert isinstance(row["text"], str) and row["token_ids"]
        assert row["variant"] == "int8"
        assert set(row["providers"]) == {"vision_encoder", "embed_tokens", "decoder_model_merged"}
        assert set(row["timings"]) >= {"image_ms", "prefill_ms", "decode_ms", "new_tokens"}


def test_bad_image_is_reported_and_the_rest_still_runs(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is a text file, not a photo")
    good = write_photo(tmp_path / "good.jpg")
    code = main(["caption", str(bad), str(good), "--model", "demo", "--json",
                 "--max-new-tokens", "3", "--threads", "1"])
    captured = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in json_lines(captured.out)}
    assert code == EXIT_SOME_FAILED
    assert rows["notes.jpg"]["ok"] is False and rows["notes.jpg"]["error"]
    assert rows["good.jpg"]["ok"] is True
    assert "Traceback" not in captured.err


def test_plain_output_streams_the_caption(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_photo(tmp_path / "a.jpg")
    code = main(["caption", str(a), "--model", "demo", "--max-new-tokens", "5",
                 "--prompt", "What does the sign say?", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.endswith("\n") and len(out.strip()) > 0


def test_missing_file_is_a_failure_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["caption", str(tmp_path / "nope.jpg"), "--model", "demo", "--threads", "1"])
    assert code in (EXIT_SOME_FAILED, EXIT_ERROR)
    assert "nope.jpg" in capsys.readouterr().err


def test_no_model_installed_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_photo(tmp_path / "a.jpg")
    code = main(["caption", str(a)])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "models pull" in err and "Traceback" not in err


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["caption"]) == EXIT_USAGE
    assert main(["caption", "x.jpg", "--top-p", "0", "--model", "demo"]) == EXIT_USAGE
    assert main(["caption", "x.jpg", "--preset", "no-such-preset", "--model", "demo"]) == EXIT_USAGE
    capsys.readouterr()


def test_models_list_shows_the_demo_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "list"]) == EXIT_OK
    assert "demo" in capsys.readouterr().out


def test_answers_have_no_leading_space(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """SmolVLM answers start with the space after "Assistant:"; a caption should not."""
    a = write_photo(tmp_path / "a.jpg")
    assert main(["caption", str(a), "--model", "demo", "--json", "--max-new-tokens", "4"]) == EXIT_OK
    row = json_lines(capsys.readouterr().out)[0]
    assert row["text"] and row["text"] == row["text"].strip()
    assert main(["caption", str(a), "--model", "demo", "--max-new-tokens", "4"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == out.lstrip() and out.strip() == row["text"]


def test_export_without_torch_is_a_message_not_a_traceback_simulated_missing_torch(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed app carries no torch; `sys.modules[...] = None` makes its import fail here."""
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    code = main(["models", "export", str(tmp_path / "ckpt"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "torch" in err and "export extra" in err and "Traceback" not in err


def test_second_start_reuses_the_optimised_graphs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The CLI keeps ONNX Runtime's optimised graphs in the user cache dir, not in the model."""
    from smolvlm_desktop import paths

    a = write_photo(tmp_path / "a.jpg")
    args = ["caption", str(a), "--model", "demo", "--json", "--max-new-tokens", "4"]
    assert main(args) == EXIT_OK
    first = json_lines(capsys.readouterr().out)[0]
    cached = sorted(p.name.split("-")[0] for p in paths.ort_cache_dir().iterdir())
    # The photo is 17 tiles of the demo model (a prompt of over 256 tokens): the int8 prompt
    # decoder was opened, and is cached like the others.
    assert cached == ["decoder_model_merged_int8", "decoder_model_merged_int8_prompt", "embed_tokens_int8",
                      "vision_encoder_int8"]
    assert main(args) == EXIT_OK
    assert json_lines(capsys.readouterr().out)[0]["token_ids"] == first["token_ids"]
    assert not (paths.demo_model_dir() / "ort-cache").exists()


def test_several_prompts_read_each_image_once_and_answer_each_as_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 13: one JSON line per image and prompt, in the order given, each with its prompt;
    the later prompts read no tiles; each answer is the one its prompt gets alone."""
    from smolvlm_desktop.presets import preset_prompt

    a = write_photo(tmp_path / "a.jpg", 1)
    b = write_photo(tmp_path / "b.png", 2)
    common = ["--model", "demo", "--json", "--max-new-tokens", "6", "--threads", "1", "--no-library"]
    code = main(["caption", str(a), str(b), "--prompt", "What is this?", "--preset", "ocr", *common])
    rows = json_lines(capsys.readouterr().out)
    assert code == EXIT_OK
    assert [(Path(r["path"]).name, r["prompt"]) for r in rows] == [
        ("a.jpg", "What is this?"), ("a.jpg", preset_prompt("ocr")),
        ("b.png", "What is this?"), ("b.png", preset_prompt("ocr"))]
    assert [r["timings"]["tiles_read"] > 0 for r in rows] == [True, False, True, False]
    for row in rows:
        flag = ["--prompt", row["prompt"]] if row["prompt"] == "What is this?" else ["--preset", "ocr"]
        assert main(["caption", row["path"], *flag, *common]) == EXIT_OK
        alone, = json_lines(capsys.readouterr().out)
        assert alone["token_ids"] == row["token_ids"]


def test_several_prompts_cannot_be_written_as_one_caption_file(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    a = write_photo(tmp_path / "a.jpg")
    code = main(["caption", str(a), "--prompt", "x", "--prompt", "y", "--write", "txt", "--model", "demo"])
    assert code == EXIT_USAGE
    assert "one caption per image" in capsys.readouterr().err
    assert not (tmp_path / "a.txt").exists()
