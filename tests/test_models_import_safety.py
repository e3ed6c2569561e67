"""`models import` installs only a model that runs, and a killed import leaves nothing behind
for ever (issue 12 items 11 and 12). Real model folders (the tiny model), real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smolvlm_desktop import hub, paths
from smolvlm_desktop.cli import EXIT_ERROR, EXIT_OK, main


def partials() -> list[str]:
    folder = paths.models_dir() / hub.PARTIAL_DIR_NAME
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_import_refuses_a_folder_whose_decoder_is_the_vision_graph(
        tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "swapped"
    shutil.copytree(tiny_model_dir, broken)
    for suffix in ("", "_int8"):
        shutil.copy(broken / "onnx" / f"vision_encoder{suffix}.onnx",
                    broken / "onnx" / f"decoder_model_merged{suffix}.onnx")
    assert main(["models", "import", str(broken)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "do not form a usable SmolVLM model" in err and "decoder_model_merged" in err
    assert "Traceback" not in err
    assert paths.installed_models() == [] and paths.default_model_name() is None
    assert partials() == [], "nothing of the copy is left"
    assert (broken / "onnx" / "decoder_model_merged.onnx").exists(), "the user's folder untouched"


STALLING_IMPORT = """
import sys, time
from pathlib import Path
from smolvlm_desktop import hub
from smolvlm_desktop.cli import main

marker = Path(sys.argv[1])
original = hub._copy_and_hash

def copy_and_hash(src, dst, rel, tracker):  # hang (until killed) after the first file
    result = original(src, dst, rel, tracker)
    marker.write_text("stalled")
    while True:
        time.sleep(0.05)

hub._copy_and_hash = copy_and_hash
sys.exit(main(sys.argv[2:]))
"""


def start_stalled_import(tiny_model_dir: Path, marker: Path, name: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", STALLING_IMPORT, str(marker), "models",
                              "import", str(tiny_model_dir), "--name", name],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():  # waits for an event, not a length of time
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return child


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_a_killed_import_is_cleaned_up_next_time_but_a_running_one_is_not(
        tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    killed = start_stalled_import(tiny_model_dir, tmp_path / "first", "first")
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    left = partials()
    assert any(name.startswith(".import-first-") for name in left), left

    running = start_stalled_import(tiny_model_dir, tmp_path / "second", "second")
    try:
        assert main(["models", "list"]) == EXIT_OK  # a start of the command line
        capsys.readouterr()
        now = partials()
        assert not any(name.startswith(".import-first-") for name in now), now
        assert any(name.startswith(".import-second-") for name in now), \
            "the import that still runs keeps its copy"
    finally:
        running.send_signal(signal.SIGKILL)
        running.communicate(timeout=30)

    assert main(["models", "import", str(tiny_model_dir), "--name", "third"]) == EXIT_OK
    assert partials() == [], "the next import cleans what the killed one left"
    assert [p.name for p in paths.installed_models()] == ["third"]
