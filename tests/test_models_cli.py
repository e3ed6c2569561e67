"""`smolvlm-desktop models …` end to end: exit codes, messages and the progress lines.

Pulls go to the fake Hub in tests/fake_hub.py on 127.0.0.1 (the real Hub is unreachable here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_hub import FakeHub
from test_hub import MODEL, guard_leaks_collected, tiny_repo

from smolvlm_desktop import hub, paths
from smolvlm_desktop.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main


@pytest.mark.loopback
def test_pull_prints_progress_on_stderr_and_installs(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    with FakeHub([tiny_repo(MODEL, tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        code = main(["models", "pull", MODEL, "--variant", "int8"])
    out, err = capsys.readouterr()
    assert code == EXIT_OK
    assert f"installed {MODEL} (int8)" in out
    lines = [line for line in err.splitlines() if line.strip()]
    files = len(hub.read_manifest(paths.models_dir() / MODEL)["files"])  # type: ignore[index]
    assert lines[-1].startswith(f"  [{files}/{files}] ") and len(lines) == files
    assert any("onnx/decoder_model_merged_int8.onnx" in line for line in lines)

    assert main(["models", "list"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert any(line[2:].split()[:3] == [MODEL, "installed", "int8"] for line in listed.splitlines())


def test_pull_without_network_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """No loopback marker: the test-wide guard blocks the connection."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with guard_leaks_collected():
        code = main(["models", "pull", MODEL])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err.startswith("smolvlm-desktop: error: cannot reach the Hugging Face Hub at http://127.0.0.1:9")
    assert "Traceback" not in err and err.count("\n") == 1


def test_pull_of_an_unknown_name_lists_the_catalog_and_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "pull", "SmolVLM-9000B"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Known models: SmolVLM-256M-Instruct, SmolVLM-500M-Instruct" in err
    assert main(["models", "pull"]) == EXIT_USAGE  # argparse: NAME is required
    capsys.readouterr()


def test_import_list_default_verify_remove(tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "import", str(tiny_model_dir), "--name", "tiny"]) == EXIT_OK
    assert main(["models", "default", "tiny"]) == EXIT_OK
    assert main(["models", "list"]) == EXIT_OK
    listed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("* tiny ") and "installed" in line for line in listed)
    assert any(line[2:].split()[:2] == ["SmolVLM-256M-Instruct", "available"] for line in listed)

    assert main(["models", "verify"]) == EXIT_OK
    assert "tiny: ok" in capsys.readouterr().out

    graph = paths.models_dir() / "tiny" / "onnx" / "vision_encoder_int8.onnx"
    graph.write_bytes(graph.read_bytes()[::-1])  # same size, different bytes
    assert main(["models", "verify", "tiny"]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert "tiny: PROBLEMS" in out and "onnx/vision_encoder_int8.onnx: content changed" in out
    assert "failed verification" in err

    assert main(["models", "remove", "tiny"]) == EXIT_OK
    assert not (paths.models_dir() / "tiny").exists()
    assert main(["models", "remove", "tiny"]) == EXIT_ERROR
    assert "no installed model named 'tiny'" in capsys.readouterr().err


def test_import_of_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    assert main(["models", "import", str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smolvlm-desktop: error: the files do not form a usable SmolVLM model")
    assert "tokenizer.json is missing" in err and "Traceback" not in err


def test_default_of_a_model_that_is_not_installed_is_an_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "default", "nothing-here"]) == EXIT_ERROR
    assert "no installed model named 'nothing-here'" in capsys.readouterr().err
    assert not paths.default_model_file().exists()
