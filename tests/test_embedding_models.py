"""Embedding models are a second kind of model: pulled, imported, listed, verified and removed
like chat models, never offered as one. The Hub is the local fake (tests/fake_hub.py) serving
the tiny CLIP as the catalog's clip-vit-base-patch32 and the tiny SigLIP as its
siglip-base-patch16-224. Search uses CLIP unless another embedding model is made its default."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo

from smolvlm_desktop import hub, paths
from smolvlm_desktop.cli import main
from smolvlm_desktop.engine.embeddings import EmbeddingModel

TINY_CLIP = paths.demo_embedding_model_dir()
TINY_SIGLIP = TINY_CLIP.parent / "tiny-siglip"
CLIP = "clip-vit-base-patch32"
SIGLIP = "siglip-base-patch16-224"


def test_the_catalog_knows_clip_as_an_embedding_model_with_its_graph_names():
    entry = hub.catalog_entry(CLIP)
    assert entry.kind == paths.EMBEDDING and entry.repo == "Xenova/clip-vit-base-patch32"
    assert entry.graph_files("quantized") == ["onnx/vision_model_quantized.onnx",
                                              "onnx/text_model_quantized.onnx"]
    assert entry.graph_files("fp32") == ["onnx/vision_model.onnx", "onnx/text_model.onnx"]
    assert hub.catalog_entry("SmolVLM-256M-Instruct").kind == paths.CHAT


def test_imported_clip_is_listed_verified_and_removed_but_never_a_chat_model(tiny_model_dir, capsys):
    assert main(["models", "import", str(TINY_CLIP), "--name", "my-clip"]) == 0
    assert main(["models", "import", str(tiny_model_dir), "--name", "chat"]) == 0
    assert [p.name for p in paths.installed_models()] == ["chat"]  # what the chat chooser offers
    assert [p.name for p in paths.installed_models(paths.EMBEDDING)] == ["my-clip"]
    assert paths.default_model_name() == "chat"  # the only chat model, though two are installed
    rows = {r.name: r for r in hub.list_models()}
    assert rows["my-clip"].kind == paths.EMBEDDING and rows["my-clip"].state == "installed"
    assert rows["chat"].kind == paths.CHAT
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert any("my-clip" in line and "embedding" in line for line in capsys.readouterr().out.splitlines())
    assert main(["models", "verify"]) == 0
    assert "my-clip: ok" in capsys.readouterr().out
    assert hub.set_default("my-clip") == paths.EMBEDDING  # search's default; chat's unchanged
    assert paths.default_model_name() == "chat"
    assert paths.resolve_embedding_model(None).name == "my-clip"
    assert EmbeddingModel.load(paths.resolve_embedding_model("my-clip")).variant == "int8"
    assert main(["models", "remove", "my-clip"]) == 0
    with pytest.raises(paths.ModelNotFoundError, match="no embedding model is installed"):
        paths.resolve_embedding_model(None)
    assert paths.resolve_embedding_model("demo") == TINY_CLIP


def test_importing_a_broken_embedding_folder_says_what_is_missing(tmp_path):
    broken = tmp_path / "clip"
    (broken / "onnx").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        (broken / name).write_bytes((TINY_CLIP / name).read_bytes())
    (broken / "onnx" / "vision_model.onnx").write_bytes((TINY_CLIP / "onnx" / "vision_model.onnx").read_bytes())
    with pytest.raises(hub.HubError, match="text_model"):
        hub.import_folder(broken)
    assert paths.installed_models(kind=None) == []


@pytest.mark.loopback
def test_pull_installs_clip_from_the_hub_as_an_embedding_model(monkeypatch):
    entry = hub.catalog_entry(CLIP)
    repo = FakeRepo.from_folder(entry.repo, "0" * 40, TINY_CLIP)
    with FakeHub([repo]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder = hub.pull(CLIP, variant="int8")
        with pytest.raises(hub.HubError, match="Try another --variant"):
            hub.pull(CLIP, variant="q4")
    assert folder == paths.models_dir() / CLIP
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["text_model_int8.onnx", "vision_model_int8.onnx"]
    assert paths.installed_models() == [] and paths.installed_models(paths.EMBEDDING) == [folder]
    assert hub.verify(CLIP) == []
    assert EmbeddingModel.load(folder).embed_texts(["a cat"]).shape == (1, 16)


def test_the_catalog_knows_siglip_as_an_embedding_model_with_xenovas_graph_names():
    entry = hub.catalog_entry(SIGLIP)
    assert entry.kind == paths.EMBEDDING and entry.repo == "Xenova/siglip-base-patch16-224"
    assert entry.graph_files("quantized") == ["onnx/vision_model_quantized.onnx",
                                              "onnx/text_model_quantized.onnx"]
    assert set(entry.known_files) == set(entry.graph_files("quantized"))


@pytest.mark.loopback
def test_pull_installs_siglip_as_an_embedding_model_never_a_chat_model(monkeypatch, capsys):
    entry = hub.catalog_entry(SIGLIP)
    repo = FakeRepo.from_folder(entry.repo, "0" * 40, TINY_SIGLIP)
    with FakeHub([repo]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder = hub.pull(SIGLIP)  # no variant asked for: Xenova's 8-bit _quantized files
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["text_model_quantized.onnx",
                                                                   "vision_model_quantized.onnx"]
    assert not (folder / "spiece.model").exists()  # the app reads tokenizer.json only
    assert paths.installed_models() == [] and paths.installed_models(paths.EMBEDDING) == [folder]
    assert hub.verify(SIGLIP) == []
    model = EmbeddingModel.load(folder)
    assert (model.files.family, model.variant) == ("siglip", "quantized")
    assert model.embed_texts(["a cat"]).shape == (1, 32)
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if SIGLIP in x)
    assert "embedding" in line and line.startswith("*")  # the only one: search uses it
    assert main(["models", "remove", SIGLIP]) == 0 and paths.installed_models(paths.EMBEDDING) == []


def test_search_uses_clip_by_default_and_siglip_once_made_the_default(tiny_model_dir, capsys):
    """Installed together, CLIP is search's model (not whichever sorts first); `models default`
    picks SigLIP for index and search alike, leaves the chat default alone, and removing
    SigLIP gives search back to CLIP."""
    assert main(["models", "import", str(tiny_model_dir), "--name", "chat"]) == 0
    assert main(["models", "import", str(TINY_SIGLIP), "--name", "a-siglip"]) == 0
    assert main(["models", "import", str(TINY_CLIP), "--name", CLIP]) == 0
    assert paths.resolve_embedding_model(None).name == CLIP
    capsys.readouterr()
    assert main(["models", "default", "a-siglip"]) == 0
    assert "search by meaning uses a-siglip" in capsys.readouterr().out
    assert paths.resolve_embedding_model(None).name == "a-siglip"
    assert paths.default_model_name() == "chat"
    rows = {r.name: r for r in hub.list_models()}
    assert rows["a-siglip"].is_default and not rows[CLIP].is_default and rows["chat"].is_default
    assert main(["models", "default", "chat"]) == 0  # the chat default leaves search's alone
    assert paths.resolve_embedding_model(None).name == "a-siglip"
    assert main(["models", "remove", "a-siglip"]) == 0
    assert paths.resolve_embedding_model(None).name == CLIP
    assert not paths.default_embedding_file().exists()
