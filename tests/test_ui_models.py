"""The model manager dialog on the real hub code: a download from the fake Hub on 127.0.0.1
(the only thing mocked: huggingface.co itself, which these machines cannot reach), cancel,
a blocked network, import, default and remove; then the window loads the model."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from fake_hub import FakeHub  # noqa: E402
from test_hub import MODEL, tiny_repo  # noqa: E402

from smolvlm_desktop import hub, paths  # noqa: E402
from smolvlm_desktop.settings import Settings  # noqa: E402
from ui_helpers import TIMEOUT_MS, answer_next_dialog, open_window, shoot  # noqa: E402

pytestmark = pytest.mark.gui


def settings() -> Settings:
    return Settings(max_new_tokens=4, variant=None, provider="cpu", threads=1, idle_unload_minutes=0)


def manager_for(qtbot, window):
    window.no_model.chooser.download_btn.click()  # from the empty state, as a first user would
    dialog = window.model_manager
    qtbot.waitUntil(lambda: dialog.isVisible() and dialog.table.rowCount() > 0, timeout=TIMEOUT_MS)
    return dialog


def select(dialog, name: str) -> None:
    row = next(i for i, r in enumerate(dialog.rows) if r.name == name)
    dialog.table.selectRow(row)


@pytest.mark.loopback
def test_download_from_the_empty_state_then_the_window_loads_it(qtbot, tiny_model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    window = open_window(qtbot, settings(), model=None)
    assert window.pages.currentWidget() is window.no_model
    shoot(window, "13-no-model-with-download")
    dialog = manager_for(qtbot, window)
    states = {r.name: r.state for r in dialog.rows}
    assert states[MODEL] == "available" and states["demo"] == "bundled"
    select(dialog, MODEL)
    assert dialog.download_btn.isEnabled() and not dialog.remove_btn.isEnabled()
    shoot(dialog, "13b-model-manager")
    with FakeHub([tiny_repo(MODEL, tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        reports = []
        dialog.download_btn.click()
        dialog.task.progress.connect(reports.append)
        assert dialog.progress_box.isVisibleTo(dialog) and not dialog.download_btn.isEnabled()
        qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT_MS)
    assert not dialog.error.isVisibleTo(dialog), dialog.error.text()
    assert reports and reports[-1].done == reports[-1].total
    assert (paths.models_dir() / MODEL / "manifest.json").is_file()
    qtbot.waitUntil(lambda: window.model_state == "ready", timeout=TIMEOUT_MS)
    assert window.model_info.folder == str(paths.models_dir() / MODEL)
    assert window.pages.currentWidget() is window.workspace
    qtbot.waitUntil(lambda: {r.name: r.state for r in dialog.rows}[MODEL] == "installed",
                    timeout=TIMEOUT_MS)
    shoot(dialog, "13c-model-manager-installed")


def test_a_blocked_network_is_said_plainly(qtbot, monkeypatch: pytest.MonkeyPatch) -> None:
    """No loopback marker: every socket is refused, as on a machine that is offline (an IP
    endpoint, so that not even a DNS lookup leaves the machine)."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    select(dialog, MODEL)
    dialog.download_btn.click()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT_MS)
    assert dialog.error.isVisibleTo(dialog)
    assert "Cannot reach the Hugging Face Hub" in dialog.error.text()
    assert "Import folder…" in dialog.error.text()
    assert not (paths.models_dir() / MODEL).exists()
    assert dialog.download_btn.isEnabled(), "the user can try again"
    shoot(dialog, "13d-model-manager-offline")


@pytest.mark.loopback
def test_cancel_keeps_the_bytes_and_offers_to_resume(qtbot, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ui_helpers import Gate

    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    select(dialog, MODEL)
    gate = Gate()
    with FakeHub([tiny_repo(MODEL, tiny_model_dir)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        dialog.download_btn.click()
        # Runs in the download thread: holds the pull at its first progress report.
        dialog.task.progress.connect(gate, type=Qt.ConnectionType.DirectConnection)
        qtbot.waitUntil(gate.reached.is_set, timeout=TIMEOUT_MS)
        dialog.cancel_btn.click()
        gate.open()
        qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT_MS)
    assert "Download cancelled" in dialog.error.text()
    assert not (paths.models_dir() / MODEL).exists()
    qtbot.waitUntil(lambda: {r.name: r.state for r in dialog.rows}.get(MODEL) == "partial",
                    timeout=TIMEOUT_MS)
    select(dialog, MODEL)
    assert dialog.download_btn.text() == "Resume download"
    answer_next_dialog("Remove")
    dialog.remove_btn.click()
    qtbot.waitUntil(lambda: {r.name: r.state for r in dialog.rows}.get(MODEL) == "available",
                    timeout=TIMEOUT_MS)


def test_import_set_default_and_remove(qtbot, tiny_model_dir: Path) -> None:
    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    dialog.import_folder(str(tiny_model_dir))  # what Import folder… does after the folder dialog
    qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT_MS)
    assert not dialog.error.isVisibleTo(dialog), dialog.error.text()
    installed = paths.models_dir() / tiny_model_dir.name
    qtbot.waitUntil(lambda: window.model_state == "ready", timeout=TIMEOUT_MS)
    assert window.model_info.folder == str(installed)
    select(dialog, "demo")
    dialog.default_btn.click()
    qtbot.waitUntil(lambda: paths.default_model_name() == "demo" and window.demo, timeout=TIMEOUT_MS)
    assert window.settings.model is None, "the default decides at the next start"
    qtbot.waitUntil(lambda: window.model_state == "ready" and window.tasks.pending == 0,
                    timeout=TIMEOUT_MS)
    select(dialog, tiny_model_dir.name)
    answer_next_dialog("Cancel")
    dialog.remove_btn.click()
    assert installed.is_dir()
    answer_next_dialog("Remove")
    dialog.remove_btn.click()
    qtbot.waitUntil(lambda: not installed.exists() and window.tasks.pending == 0, timeout=TIMEOUT_MS)
    assert tiny_model_dir.name not in [r.name for r in dialog.rows]


def test_the_model_in_use_cannot_be_removed(qtbot, tiny_model_dir: Path) -> None:
    hub.import_folder(tiny_model_dir)
    window = open_window(qtbot, settings(), model=str(paths.models_dir() / tiny_model_dir.name))
    window.actions["manage_models"].trigger()
    dialog = window.model_manager
    qtbot.waitUntil(lambda: dialog.table.rowCount() > 0, timeout=TIMEOUT_MS)
    select(dialog, tiny_model_dir.name)
    dialog.remove_btn.click()
    assert "is the model in use" in dialog.error.text()
    assert (paths.models_dir() / tiny_model_dir.name).is_dir()


def test_an_embedding_model_is_listed_for_search_but_never_offered_for_chat(qtbot) -> None:
    hub.import_folder(paths.demo_embedding_model_dir(), name="my-clip")
    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    qtbot.waitUntil(lambda: "my-clip" in [r.name for r in dialog.rows], timeout=TIMEOUT_MS)
    select(dialog, "my-clip")
    row = [r.name for r in dialog.rows].index("my-clip")
    assert dialog.table.item(row, 1).text().endswith("for search")
    assert not dialog.use_btn.isEnabled() and not dialog.default_btn.isEnabled()  # search's already
    assert dialog.remove_btn.isEnabled()


def test_download_of_an_embedding_model_fetches_its_8_bit_quantized_files(qtbot) -> None:
    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    rows = {r.name: r for r in dialog.rows}
    assert dialog.variant_for(rows["siglip-base-patch16-224"]) == "quantized"
    assert dialog.variant_for(rows["SmolVLM-256M-Instruct"]) == "int8"
    row = [r.name for r in dialog.rows].index("siglip-base-patch16-224")
    assert dialog.table.item(row, 2).text() == "≈ 201 MB to download"  # 95 + 106 MB, from the catalog


def test_set_as_default_on_an_embedding_model_picks_search_s_model_not_the_chat_model(qtbot) -> None:
    hub.import_folder(paths.demo_embedding_model_dir(), name="clip-vit-base-patch32")
    hub.import_folder(paths.demo_embedding_model_dir().parent / "tiny-siglip", name="siglip")
    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    qtbot.waitUntil(lambda: "siglip" in [r.name for r in dialog.rows], timeout=TIMEOUT_MS)
    select(dialog, "siglip")
    assert not dialog.use_btn.isEnabled() and dialog.default_btn.isEnabled()
    before = window.model_state
    dialog.default_btn.click()
    qtbot.waitUntil(lambda: {r.name: r.is_default for r in dialog.rows}.get("siglip") is True,
                    timeout=TIMEOUT_MS)
    assert paths.resolve_embedding_model(None).name == "siglip"
    assert paths.default_model_name() is None
    assert window.model_state == before and window.tasks.pending == 0  # it was not loaded for chat
@pytest.mark.loopback
def test_fastvlm_download_asks_for_its_licence_first(qtbot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Declining downloads nothing (no request reaches the Hub); accepting downloads it."""
    tiny_fastvlm = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-fastvlm"
    window = open_window(qtbot, settings(), model=None)
    dialog = manager_for(qtbot, window)
    select(dialog, "FastVLM-0.5B")
    assert "apple-amlr" in dialog.summary.text() and "DocVQA 82.5" in dialog.summary.text()
    with FakeHub([tiny_repo("FastVLM-0.5B", tiny_fastvlm)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(dialog, "variant_for", lambda status: "fp32")  # the tiny model has only fp32
        seen: list[str] = []
        answer_next_dialog("No", seen)
        dialog.download_btn.click()
        assert dialog.task is None and server.requests == []
        assert "apple-amlr" in seen[0]
        answer_next_dialog("Yes")
        dialog.download_btn.click()
        qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT_MS)
    assert not dialog.error.isVisibleTo(dialog), dialog.error.text()
    assert (hub.read_manifest(paths.models_dir() / "FastVLM-0.5B") or {}).get("licence_accepted") == "apple-amlr"
