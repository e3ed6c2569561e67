"""`models pull` and `models import` build this app's graphs from the published weights.

The fake Hub (tests/fake_hub.py, on 127.0.0.1) publishes the tiny checkpoint the way the real
repos are laid out: configs, tokenizer, model.safetensors and the official-layout onnx/ files.
The weights are the tiny model's (build_tiny_checkpoint, which needs torch in this process);
the pull itself runs, in one test, in a child process where importing torch or transformers
fails. The result is compared with the committed tiny model, which export_checkpoint wrote
from the same weights with torch and transformers loaded and checked against transformers.
Mocked: only the Hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo
from test_engine import ask
from test_hub import catalog_revision

from smolvlm_desktop import hub, paths
from smolvlm_desktop.cli import EXIT_OK, main

REPO = Path(__file__).resolve().parent.parent
MODEL = "SmolVLM-256M-Instruct"
WEIGHTS = "model.safetensors"

pytestmark = pytest.mark.loopback

# On sys.path ahead of site-packages as sitecustomize.py: the child process behaves as an
# installed app without PyTorch (nor the safetensors package, nor onnxruntime's Python
# quantisation tools, which the installers leave out).
BLOCKER = textwrap.dedent('''
    import sys

    BLOCKED = {"torch", "transformers", "safetensors", "onnx_ir", "sympy",
               "onnxruntime.quantization", "onnxruntime.transformers"}

    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NotInstalled())
''')

CHILD = textwrap.dedent('''
    import sys
    for name in ("torch", "transformers"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} was importable: the blocker did not work")
    from smolvlm_desktop.cli import main
    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    raise SystemExit(code if not loaded else f"loaded {loaded}")
''')


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from smolvlm_desktop.export.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


def published(checkpoint: Path, tiny_model_dir: Path, name: str = MODEL) -> FakeRepo:
    """The checkpoint plus the official-layout onnx/ files, as one Hub repo at the catalog's commit."""
    entry = next(e for e in hub.load_catalog() if e.name == name)
    repo = FakeRepo.from_folder(entry.repo, catalog_revision(name), checkpoint)
    repo.files.update(FakeRepo.from_folder(entry.repo, repo.commit, tiny_model_dir, include=("onnx/*",)).files)
    repo.lfs_suffixes = (*repo.lfs_suffixes, ".safetensors")
    return repo


def same_graphs(folder: Path, tiny_model_dir: Path) -> None:
    built = sorted(p.name for p in (folder / "onnx").iterdir())
    assert built == sorted(p.name for p in (tiny_model_dir / "onnx").iterdir())
    for name in built:
        assert (folder / "onnx" / name).read_bytes() == (tiny_model_dir / "onnx" / name).read_bytes(), name


def test_pull_builds_the_graphs_in_a_process_without_torch(
        checkpoint: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's target: `models pull SmolVLM-256M-Instruct` where torch and transformers
    cannot be imported installs graphs built from model.safetensors, byte for byte those the
    torch path exported, and answering token for token as they do (fp32 and int8)."""
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import GenerationSettings

    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    with FakeHub([published(checkpoint, tiny_model_dir)]) as server:
        env = {**os.environ, "HF_ENDPOINT": server.url,
               "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(REPO)])}
        child = subprocess.run([sys.executable, "-c", CHILD, "models", "pull", MODEL], env=env,
                               capture_output=True, text=True, timeout=300)
        assert child.returncode == 0, child.stderr
        assert not any("/onnx/" in r.path for r in server.requests), "a building pull fetches no official graph"
    assert "building [7/7] done" in child.stderr and f"installed {MODEL} (int8, built here" in child.stdout

    folder = paths.models_dir() / MODEL
    manifest = hub.read_manifest(folder)
    assert manifest["source"] == "built" and manifest["revision"] == catalog_revision(MODEL)
    assert manifest["variants"] == ["fp32", "int8"] and WEIGHTS in manifest["weights"]
    assert not (folder / WEIGHTS).exists() and hub.verify(MODEL) == []
    assert not (paths.models_dir() / hub.PARTIAL_DIR_NAME).exists(), "the downloaded weights were cleared"
    same_graphs(folder, tiny_model_dir)

    settings = GenerationSettings(max_new_tokens=12)
    for variant in ("fp32", "int8"):
        ours = VisionLanguageModel.load(folder, variant=variant, provider="cpu", threads=1)
        torch_exported = VisionLanguageModel.load(tiny_model_dir, variant=variant, provider="cpu", threads=1)
        assert ours.generate(ask(), settings).token_ids == torch_exported.generate(ask(), settings).token_ids


def test_a_build_stopped_midway_keeps_the_weights_and_the_next_pull_only_builds(
        checkpoint: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumable: a cancel during the build keeps the checked download; the next pull re-checks
    it from disk (no second download) and builds. The first download is cut once mid-file and
    resumed with a Range request."""
    cancel = threading.Event()
    steps: list[str] = []

    def progress(p: hub.PullProgress) -> None:
        if p.stage == "build":
            steps.append(p.file)
            if "decoder_model_merged" in p.file:
                cancel.set()

    with FakeHub([published(checkpoint, tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.cut[WEIGHTS] = 1
        with pytest.raises(hub.PullCancelled):
            hub.pull(MODEL, progress=progress, cancel=cancel)
        assert any(r is not None for r in server.served(WEIGHTS)), "the cut download was resumed"
        assert not (paths.models_dir() / MODEL).exists()
        weights = paths.models_dir() / hub.PARTIAL_DIR_NAME / (MODEL + hub.WEIGHTS_SUFFIX)
        assert (weights / WEIGHTS).read_bytes() == (checkpoint / WEIGHTS).read_bytes()
        assert [r.state for r in hub.list_models() if r.name == MODEL] == ["partial"]

        sent = len(server.served(WEIGHTS))
        folder = hub.pull(MODEL)
        assert len(server.served(WEIGHTS)) == sent, "the kept weights were not downloaded again"
        fetched = len(server.requests)
        assert hub.pull(MODEL) == folder  # already built from this commit: nothing to do
        assert not any("/resolve/" in r.path for r in server.requests[fetched:])
    assert steps[0] == "writing vision_encoder.onnx"
    same_graphs(folder, tiny_model_dir)


def test_corrupt_weights_are_refused_and_nothing_is_built(
        checkpoint: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeHub([published(checkpoint, tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.corrupt.add(WEIGHTS)
        with pytest.raises(hub.ChecksumError, match=WEIGHTS):
            hub.pull(MODEL)
    assert not (paths.models_dir() / MODEL).exists()


def test_official_files_are_still_pulled_as_they_are(
        checkpoint: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--official downloads the official ONNX files, not the weights, and they run. (500M:
    the catalog pins the real 256M's vision_encoder_int8.onnx, which the fake Hub lacks.)"""
    from smolvlm_desktop.engine.model import VisionLanguageModel

    name = "SmolVLM-500M-Instruct"
    with FakeHub([published(checkpoint, tiny_model_dir, name)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert main(["models", "pull", name, "--official"]) == EXIT_OK
        assert not server.served(WEIGHTS)
    assert f"installed {name} (int8) in" in capsys.readouterr().out
    folder = paths.models_dir() / name
    assert hub.read_manifest(folder)["source"] == "hub"
    assert (folder / "onnx" / "vision_encoder_int8.onnx").read_bytes() == \
        (tiny_model_dir / "onnx" / "vision_encoder_int8.onnx").read_bytes()
    VisionLanguageModel.load(folder, provider="cpu", threads=1).close()


def test_import_of_a_checkpoint_folder_builds_it_and_leaves_the_folder_alone(
        checkpoint: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}
    assert main(["models", "import", str(checkpoint), "--name", "my-finetune"]) == EXIT_OK
    assert "building [7/7] done" in capsys.readouterr().err
    folder = paths.models_dir() / "my-finetune"
    manifest = hub.read_manifest(folder)
    assert manifest["source"] == "built" and manifest["origin"] == str(checkpoint)
    assert hub.verify("my-finetune") == []
    same_graphs(folder, tiny_model_dir)
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == before
    assert not (paths.models_dir() / hub.PARTIAL_DIR_NAME).exists()


def test_import_of_a_checkpoint_the_app_cannot_build_says_why_and_installs_nothing(
        checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in checkpoint.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / WEIGHTS).write_bytes((checkpoint / WEIGHTS).read_bytes()[:-10])  # a truncated copy
    with pytest.raises(hub.HubError, match="outside the file"):
        hub.import_folder(broken, name="broken")
    config = json.loads((checkpoint / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "relu"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(hub.HubError, match="not the tanh GELU"):
        hub.import_folder(broken, name="broken")
    assert not (paths.models_dir() / "broken").exists()


@pytest.mark.gui
def test_the_window_s_download_builds_the_graphs_and_loads_them(
        qtbot, checkpoint: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model ▸ Manage models ▸ Download runs the same building pull, shows its steps, and the
    window then runs the built model."""
    from test_ui_models import manager_for, select, settings
    from ui_helpers import TIMEOUT_MS, open_window

    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    select(dialog, MODEL)
    texts: list[str] = []
    with FakeHub([published(checkpoint, tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        dialog.download_btn.click()
        dialog.task.progress.connect(lambda p: texts.append(dialog.progress_text.text()))
        qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT_MS)
    assert not dialog.error.isVisibleTo(dialog), dialog.error.text()
    assert any("building the graphs here, step 7 of 7" in t for t in texts), texts[-3:]
    assert hub.read_manifest(paths.models_dir() / MODEL)["source"] == "built"
    qtbot.waitUntil(lambda: window.model_state == "ready", timeout=TIMEOUT_MS)
    assert window.model_info.folder == str(paths.models_dir() / MODEL)


def test_weights_too_big_to_build_get_the_official_files(
        checkpoint: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MAX_BUILD_WEIGHTS_BYTES (the 2.2B's 4.5 GB would make a decoder too big for one
    ONNX file) a pull downloads the official files, decided before any download."""
    monkeypatch.setattr(hub, "MAX_BUILD_WEIGHTS_BYTES", (checkpoint / WEIGHTS).stat().st_size - 1)
    with FakeHub([published(checkpoint, tiny_model_dir, "SmolVLM-500M-Instruct")]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder = hub.pull("SmolVLM-500M-Instruct")
        assert not server.served(WEIGHTS)
    assert hub.read_manifest(folder)["source"] == "hub"
