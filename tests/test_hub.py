"""The model manager against a real HTTP server on 127.0.0.1 that speaks the Hub's protocol.

The real huggingface_hub client is pointed at `tests/fake_hub.py` through HF_ENDPOINT, and the
files it serves are the bundled tiny model's, so an installed pull really loads. Nothing is
mocked except the Hub itself (which these machines cannot reach) and, in one test, the progress
interval (so that a cancel lands in the middle of a small file).
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo

from smolvlm_desktop import hub, paths
from smolvlm_desktop.engine.files import load_model_files

MODEL = "SmolVLM-500M-Instruct"  # a catalog entry with a pinned revision and no pinned sha256
DECODER = "onnx/decoder_model_merged_int8.onnx"


def catalog_revision(name: str) -> str:
    return next(e for e in hub.load_catalog() if e.name == name).revision or "0" * 40


def tiny_repo(name: str, tiny_model_dir: Path, extra: dict[str, bytes] | None = None) -> FakeRepo:
    """The tiny model's files, published as the catalog entry `name` at its pinned commit."""
    entry = next(e for e in hub.load_catalog() if e.name == name)
    repo = FakeRepo.from_folder(entry.repo, catalog_revision(name), tiny_model_dir)
    repo.files.update(extra or {})
    return repo


@pytest.fixture
def fake_hub(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeHub([tiny_repo(MODEL, tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partial_dir(name: str = MODEL) -> Path:
    return paths.models_dir() / hub.PARTIAL_DIR_NAME / name


# ------------------------------------------------------------------------------ pull


@pytest.mark.loopback
def test_pull_installs_a_loadable_model_with_progress_and_manifest(fake_hub: FakeHub, tiny_model_dir: Path) -> None:
    from huggingface_hub import constants

    reports: list[hub.PullProgress] = []
    online_during: list[bool] = []

    def on_progress(p: hub.PullProgress) -> None:
        reports.append(p)
        online_during.append(constants.HF_HUB_OFFLINE)

    folder = hub.pull(MODEL, progress=on_progress)

    assert folder == paths.models_dir() / MODEL
    model = load_model_files(folder)
    assert set(model.variants) == {"int8"}, "only the asked-for variant is downloaded"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["revision"] == catalog_revision(MODEL) and manifest["variants"] == ["int8"]
    assert manifest["repo"] == "HuggingFaceTB/SmolVLM-500M-Instruct"
    for rel, recorded in manifest["files"].items():
        assert recorded["sha256"] == sha256(tiny_model_dir / rel) == sha256(folder / rel)
    assert DECODER in manifest["files"] and "config.json" in manifest["files"]
    last = reports[-1]
    expected_total = sum((tiny_model_dir / rel).stat().st_size for rel in manifest["files"])
    assert (last.done, last.total, last.files_done) == (expected_total, expected_total, last.files_total)
    assert all(a.done <= b.done for a, b in zip(reports, reports[1:])), "overall progress never goes back"
    assert online_during and not any(online_during), "the Hub is online only while pull runs"
    assert constants.HF_HUB_OFFLINE is True, "offline mode is restored afterwards"
    assert not partial_dir().exists() and not partial_dir().parent.exists()
    assert hub.verify(MODEL) == []


@pytest.mark.loopback
def test_pull_resumes_with_a_range_request_when_the_connection_drops(fake_hub: FakeHub) -> None:
    fake_hub.cut[DECODER] = 1  # the first attempt gets half the file, then the socket closes

    folder = hub.pull(MODEL)

    served = fake_hub.served(DECODER)
    size = (folder / DECODER).stat().st_size
    assert served[0] is None and len(served) == 2
    assert served[1] == f"bytes={size // 2}-", "only the missing half is fetched again"
    assert hub.verify(MODEL) == []


@pytest.mark.loopback
def test_a_connection_that_keeps_dropping_is_a_clear_error_and_keeps_the_bytes(fake_hub: FakeHub) -> None:
    fake_hub.cut[DECODER] = hub.CHUNK_RETRIES + 1

    with pytest.raises(hub.HubUnreachableError, match="run the same pull again to resume"):
        hub.pull(MODEL)

    part = partial_dir() / (DECODER + ".part")
    assert part.is_file() and part.stat().st_size > 0
    assert not (paths.models_dir() / MODEL).exists()


@pytest.mark.loopback
def test_a_cancelled_pull_keeps_its_bytes_and_the_next_pull_resumes(
        fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "PROGRESS_INTERVAL_S", 0.0)  # report every chunk, to cancel mid-file
    cancel = threading.Event()

    def cancel_inside_the_decoder(p: hub.PullProgress) -> None:
        if p.file == DECODER and p.file_done > 0:
            cancel.set()

    with pytest.raises(hub.PullCancelled):
        hub.pull(MODEL, progress=cancel_inside_the_decoder, cancel=cancel)

    assert not (paths.models_dir() / MODEL).exists(), "nothing is installed after a cancel"
    kept = (partial_dir() / (DECODER + ".part")).stat().st_size
    total = fake_hub.repos[0].files[DECODER]
    assert 0 < kept < len(total)
    assert (partial_dir() / "config.json").is_file()

    hub.pull(MODEL)

    assert fake_hub.served(DECODER) == [None, f"bytes={kept}-"]
    assert fake_hub.served("config.json") == [None], "finished files are re-hashed, not re-fetched"
    assert hub.verify(MODEL) == []


@pytest.mark.loopback
@pytest.mark.parametrize("bad_file", [DECODER, "config.json"], ids=["lfs-sha256", "git-blob-id"])
def test_a_corrupted_download_is_refused_and_nothing_is_installed(fake_hub: FakeHub, bad_file: str) -> None:
    fake_hub.corrupt.add(bad_file)

    with pytest.raises(hub.ChecksumError) as caught:
        hub.pull(MODEL)

    message = str(caught.value)
    assert bad_file in message and "nothing was installed" in message
    assert not (paths.models_dir() / MODEL).exists()
    assert paths.installed_models() == []
    assert not (partial_dir() / bad_file).exists() and not (partial_dir() / (bad_file + ".part")).exists()

    fake_hub.corrupt.clear()
    assert hub.pull(MODEL).is_dir(), "the next pull fetches the bad file again and succeeds"


@pytest.mark.loopback
def test_a_sha256_pinned_in_the_catalog_must_match_the_hub(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The catalog pins the real sha256 of SmolVLM-256M's vision_encoder_int8.onnx; this fake
    # repo serves the tiny model's instead, so the Hub's metadata disagrees with the catalog.
    with FakeHub([tiny_repo("SmolVLM-256M-Instruct", tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(hub.ChecksumError, match="catalog pins"):
            hub.pull("SmolVLM-256M-Instruct")
        assert server.sent == [], "refused before downloading anything"


@pytest.mark.loopback
def test_a_second_variant_joins_the_installed_commit_and_a_repeat_pull_downloads_nothing(fake_hub: FakeHub) -> None:
    hub.pull(MODEL, variant="int8")
    hub.pull(MODEL, variant="fp32")
    sent_before = len(fake_hub.sent)

    folder = hub.pull(MODEL, variant="int8")

    assert len(fake_hub.sent) == sent_before, "an installed variant is not downloaded again"
    assert set(load_model_files(folder).variants) == {"int8", "fp32"}
    manifest = hub.read_manifest(folder)
    assert manifest is not None and manifest["variants"] == ["fp32", "int8"]
    assert "onnx/decoder_model_merged.onnx" in manifest["files"] and DECODER in manifest["files"]
    assert hub.verify(MODEL) == []


@pytest.mark.loopback
def test_external_weight_files_of_a_graph_are_downloaded_too(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"\x00" * 4096  # SmolVLM-Instruct's fp32 decoder keeps its weights in .onnx_data
    repo = tiny_repo("SmolVLM-Instruct", tiny_model_dir, {"onnx/decoder_model_merged.onnx_data": data})
    with FakeHub([repo]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder = hub.pull("SmolVLM-Instruct", variant="fp32")
    assert (folder / "onnx/decoder_model_merged.onnx_data").read_bytes() == data
    assert "onnx/decoder_model_merged_int8.onnx" not in hub.read_manifest(folder)["files"]  # type: ignore[index]


@pytest.mark.loopback
def test_a_variant_the_repo_lacks_is_refused_before_downloading(fake_hub: FakeHub) -> None:
    with pytest.raises(hub.HubError, match="complete fp16 release"):
        hub.pull(MODEL, variant="fp16")
    assert fake_hub.sent == []


@pytest.mark.loopback
def test_an_unknown_revision_is_a_clear_error(fake_hub: FakeHub) -> None:
    with pytest.raises(hub.HubError, match="no such revision"):
        hub.pull(MODEL, revision="f" * 40)


def test_pull_is_a_clear_error_when_the_network_is_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No loopback marker: the test-wide guard refuses every connection, like a machine offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    message = pull_expecting_unreachable(MODEL)
    assert message.startswith("cannot reach the Hugging Face Hub at http://127.0.0.1:9: ")
    assert "models import" in message, "the message says what else the user can do"
    assert constants.HF_HUB_OFFLINE is True
    assert not (paths.models_dir() / MODEL).exists() and not partial_dir().exists()


def pull_expecting_unreachable(name: str) -> str:
    with guard_leaks_collected():
        with pytest.raises(hub.HubUnreachableError) as caught:
            hub.pull(name)
        message = str(caught.value)
        del caught
    return message


@contextmanager
def guard_leaks_collected() -> Iterator[None]:
    """Run code that the conftest's socket guard blocks, and clean up after the guard.

    The guard raises a RuntimeError from socket.connect, not the OSError a real offline machine
    gives, so socket.create_connection leaves its socket unclosed (it closes only on OSError).
    Collect that socket here with its ResourceWarning ignored, or it fails whichever test runs
    when the garbage collector gets to it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
        gc.collect()


def test_pull_refuses_unknown_names_and_models_without_onnx() -> None:
    with pytest.raises(hub.UnknownModelError) as caught:
        hub.pull("SmolVLM-9000B")
    assert "SmolVLM-256M-Instruct" in str(caught.value) and "SmolVLM2-500M-Video-Instruct" in str(caught.value)
    with pytest.raises(hub.HubError, match="no ONNX release"):
        hub.pull("SmolVLM2-2.2B-Instruct")
    with pytest.raises(hub.HubError, match="unknown variant"):
        hub.pull(MODEL, variant="fp64")


# ------------------------------------------------------------------------------ build


@pytest.mark.loopback
@pytest.mark.reference
def test_build_downloads_the_weights_exports_them_here_and_installs_the_faster_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`models build`: the repo's PyTorch checkpoint (the tiny one, served by the fake Hub)
    is downloaded, exported with the app's exporter and installed as NAME-built, whose
    decoder the engine runs in batches and with its cache in place."""
    pytest.importorskip("torch")
    from smolvlm_desktop.cli import main
    from smolvlm_desktop.engine.generate import InPlaceDecoderState
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import GenerationSettings, Message
    from smolvlm_desktop.export.tiny import build_tiny_checkpoint

    entry = next(e for e in hub.load_catalog() if e.name == MODEL)
    repo = FakeRepo.from_folder(entry.repo, catalog_revision(MODEL), build_tiny_checkpoint(tmp_path / "ckpt"))
    repo.lfs_suffixes = (*repo.lfs_suffixes, ".safetensors")
    with FakeHub([repo]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert main(["models", "build", MODEL]) == 0
        assert any(r.path.endswith("/model.safetensors") for r in server.requests)
        assert main(["models", "build", MODEL]) == 1  # refused before downloading again
    assert "already installed" in capsys.readouterr().err
    folder = paths.models_dir() / f"{MODEL}-built"
    manifest = hub.read_manifest(folder)
    assert manifest["source"] == "built" and manifest["revision"] == catalog_revision(MODEL)
    assert "int8" in manifest["variants"] and not (folder / "model.safetensors").exists()
    assert not partial_dir(MODEL + hub.WEIGHTS_SUFFIX).exists(), "the downloaded weights were cleared"
    model = VisionLanguageModel.load(folder, provider="cpu", threads=1)
    assert model.decodes_in_batches and isinstance(model.new_decoder_state(), InPlaceDecoderState)
    answer = model.generate([Message("user", "Say something.")], GenerationSettings(max_new_tokens=3))
    assert len(answer.token_ids) == 3


@pytest.mark.loopback
def test_build_refuses_a_repo_without_pytorch_weights_before_downloading(fake_hub: FakeHub) -> None:
    with pytest.raises(hub.HubError, match="no PyTorch weights to build from"):
        hub.pull_weights(MODEL)
    assert not any("/resolve/" in r.path for r in fake_hub.requests)


@pytest.mark.loopback
def test_the_weights_of_an_unfinished_build_are_kept_for_a_retry_and_removed_with_the_name(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloaded weights stay until a build installs (a failed export retries without a
    second download); `models remove NAME` clears them."""
    repo = tiny_repo(MODEL, tiny_model_dir, extra={"model.safetensors": b"weights" * 1000})
    with FakeHub([repo]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder, commit = hub.pull_weights(MODEL)
        assert commit == catalog_revision(MODEL)
        assert (folder / "model.safetensors").read_bytes() == b"weights" * 1000
        assert (folder / "config.json").is_file() and not (folder / "onnx").exists()
        fetched = len(server.requests)
        hub.pull_weights(MODEL)  # checked again from the kept bytes, not downloaded again
        assert not any("/resolve/" in r.path for r in server.requests[fetched:])
    hub.remove(MODEL)
    assert not folder.exists()


# ------------------------------------------------------------------------------ import, verify


def test_import_copies_a_real_model_folder_and_records_a_manifest(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "copied-from-usb"
    shutil.copytree(tiny_model_dir, src)
    (src / "model.safetensors").write_bytes(b"pytorch weights the app does not need")

    folder = hub.import_folder(src, name="tiny")

    assert folder == paths.models_dir() / "tiny"
    assert set(load_model_files(folder).variants) == {"fp32", "int8"}
    assert not (folder / "model.safetensors").exists()
    assert (src / "model.safetensors").exists(), "the source folder is left as it was"
    manifest = hub.read_manifest(folder)
    assert manifest is not None and manifest["source"] == "import" and manifest["variants"] == ["fp32", "int8"]
    assert manifest["files"][DECODER]["sha256"] == sha256(tiny_model_dir / DECODER)
    assert hub.verify("tiny") == []


def test_import_can_move_a_folder_instead(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "mine"
    shutil.copytree(tiny_model_dir, src)
    folder = hub.import_folder(src, copy=False)
    assert folder.name == "mine" and not src.exists()
    assert hub.verify("mine") == []


def test_import_refuses_a_folder_that_is_not_a_model_and_a_taken_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "half" / "config.json")
    with pytest.raises(hub.HubError, match="tokenizer.json is missing"):
        hub.import_folder(tmp_path / "half")
    assert paths.installed_models() == []

    hub.import_folder(tiny_model_dir, name="tiny")
    with pytest.raises(hub.HubError, match="already installed"):
        hub.import_folder(tiny_model_dir, name="tiny")
    with pytest.raises(hub.HubError, match="cannot be a model name"):
        hub.import_folder(tiny_model_dir, name="../escape")


def test_verify_finds_a_changed_and_a_missing_file(tiny_model_dir: Path) -> None:
    folder = hub.import_folder(tiny_model_dir, name="tiny")
    graph = folder / DECODER
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    graph.write_bytes(bytes(data))
    (folder / "generation_config.json").unlink()

    problems = hub.verify("tiny")

    assert any(p.startswith(DECODER) and "content changed" in p for p in problems)
    assert any(p.startswith("generation_config.json") and "missing" in p for p in problems)
    assert len(problems) == 2


def test_verify_without_a_manifest_says_so(tiny_model_dir: Path) -> None:
    shutil.copytree(tiny_model_dir, paths.models_dir() / "hand-copied")
    (problem,) = hub.verify("hand-copied")
    assert "no readable manifest.json" in problem
    with pytest.raises(hub.NotInstalledError, match="hand-copied"):
        hub.verify("nope")


# ------------------------------------------------------------------------------ remove, default, list


def test_set_default_is_what_resolve_model_uses(tiny_model_dir: Path) -> None:
    a = hub.import_folder(tiny_model_dir, name="a")
    b = hub.import_folder(tiny_model_dir, name="b")
    assert paths.default_model_name() is None, "two models and no default: nothing is guessed"

    hub.set_default("b")

    assert paths.default_model_file().read_text(encoding="utf-8").strip() == "b"
    assert paths.resolve_model(None) == b != a
    hub.set_default("demo")
    assert paths.resolve_model(None) == paths.demo_model_dir()
    with pytest.raises(hub.NotInstalledError, match="installed: a, b"):
        hub.set_default("c")


def test_remove_deletes_the_model_and_forgets_it_as_default(tiny_model_dir: Path) -> None:
    folder = hub.import_folder(tiny_model_dir, name="tiny")
    hub.set_default("tiny")

    hub.remove("tiny")

    assert not folder.exists() and not paths.default_model_file().exists()
    with pytest.raises(hub.NotInstalledError):
        hub.remove("tiny")
    with pytest.raises(hub.HubError, match="part of the app"):
        hub.remove("demo")


def test_remove_also_deletes_an_unfinished_download() -> None:
    partial_dir().mkdir(parents=True)
    (partial_dir() / "config.json.part").write_bytes(b"{")
    hub.remove(MODEL)
    assert not partial_dir().exists()


def test_list_models_shows_catalog_installed_partial_and_demo(tiny_model_dir: Path) -> None:
    hub.import_folder(tiny_model_dir, name=MODEL)
    hub.import_folder(tiny_model_dir, name="my-own")
    hub.set_default("my-own")
    (paths.models_dir() / hub.PARTIAL_DIR_NAME / "SmolVLM-256M-Instruct").mkdir(parents=True)

    rows = {row.name: row for row in hub.list_models()}

    assert rows[MODEL].state == "installed" and rows[MODEL].variants == ("fp32", "int8")
    assert rows[MODEL].repo == "HuggingFaceTB/SmolVLM-500M-Instruct" and rows[MODEL].size_bytes
    assert rows["my-own"].state == "installed" and rows["my-own"].is_default
    assert rows["SmolVLM-256M-Instruct"].state == "partial"
    assert rows["SmolVLM-Instruct"].state == "available"
    assert rows["SmolVLM2-2.2B-Instruct"].state == "no-onnx"
    assert rows["demo"].state == "bundled"
    assert hub.PARTIAL_DIR_NAME not in rows


def test_the_catalog_is_well_formed() -> None:
    """Pinned revisions are full commit ids (the Hub does not resolve short ones)."""
    catalog = hub.load_catalog()
    assert [e.name for e in catalog if e.onnx] == [
        "SmolVLM-256M-Instruct", "SmolVLM-500M-Instruct", "SmolVLM-Instruct",
        "SmolVLM2-256M-Video-Instruct", "SmolVLM2-500M-Video-Instruct", "FastVLM-0.5B",
        "clip-vit-base-patch32", "siglip-base-patch16-224"]
    for entry in catalog:
        assert entry.revision is None or len(entry.revision) == 40 and int(entry.revision, 16) >= 0
        for rel, known in entry.known_files.items():
            assert known["sha256"] is None or len(known["sha256"]) == 64
        if entry.onnx:
            graphs = 2 if entry.kind == paths.EMBEDDING else 3  # vision + text / the three SmolVLM graphs
            assert "config.json" in entry.common_files and len(entry.graph_files("int8")) == graphs


def test_manifest_and_default_writes_use_the_apps_atomic_writer(tiny_model_dir: Path, tmp_path: Path) -> None:
    """library/atomic.py (fsync'd, keeps the file's permission bits) is the one atomic writer:
    a second copy here lost a manifest's mode on every rewrite and synced nothing."""
    folder = hub.import_folder(tiny_model_dir, name="kept")
    manifest = folder / hub.MANIFEST_NAME
    manifest.chmod(0o600)
    hub.write_manifest(folder, hub.read_manifest(folder) | {"note": "rewritten"})
    assert (manifest.stat().st_mode & 0o777, hub.read_manifest(folder)["note"]) == (0o600, "rewritten")

    hub.set_default("kept")
    paths.default_model_file().chmod(0o640)
    hub.set_default("demo")
    assert paths.default_model_file().stat().st_mode & 0o777 == 0o640
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_manifest_that_cannot_be_written_is_a_hub_error(tiny_model_dir: Path) -> None:
    folder = hub.import_folder(tiny_model_dir, name="blocked")
    (folder / hub.MANIFEST_NAME).unlink()
    (folder / hub.MANIFEST_NAME).mkdir()  # a folder where the file goes: fails even as root
    with pytest.raises(hub.HubError, match="could not write"):
        hub.write_manifest(folder, {"files": {}})
