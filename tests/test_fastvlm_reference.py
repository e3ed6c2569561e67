"""The tiny FastVLM (data/tiny-fastvlm) against transformers' FastVlmForConditionalGeneration:
the same greedy tokens, fp32, and the same prompt ids as transformers' LLaVA processor.

transformers' FastVLM vision tower is timm's fastvit_mci3, and timm needs a torchvision that
loads with the installed torch; the project's torch (2.13) has none, so these tests run in a
second environment (torch 2.14.1, torchvision 0.29.1, timm; docs/FASTVLM_FORMAT.md says how)
and skip, saying why, everywhere else. The torch model is rebuilt from the build script's seed:
the very weights the committed graphs were exported from.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import timm  # noqa: F401
    import torch
    import torchvision  # noqa: F401
    import transformers
except Exception as exc:  # noqa: BLE001 - an ImportError, or torchvision failing against this torch
    pytest.skip(f"FastVLM reference needs torch, torchvision, timm and transformers that load together: {exc}",
                allow_module_level=True)

from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import GenerationSettings, Message
from tests.test_processor import photo

pytestmark = [pytest.mark.fastvlm_reference, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "smolvlm_desktop" / "data" / "tiny-fastvlm"


def _build_script():
    spec = importlib.util.spec_from_file_location("build_tiny_fastvlm", ROOT / "scripts" / "build_tiny_fastvlm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def engine():
    model = VisionLanguageModel.load(TINY, variant="fp32", threads=1)
    yield model
    model.close()


@pytest.fixture(scope="module")
def reference(engine):
    build = _build_script()
    return build.build_model(engine.prompt.tokenizer.get_vocab_size(), engine.files.image_token_id)


QUESTIONS = {
    "photo, a question": [Message("user", "What is in this picture?", images=(photo(400, 300, 31),))],
    "portrait, no text": [Message("user", "", images=(photo(200, 500, 32),))],
    "white page": [Message("user", "Read the document.", images=(Image.new("RGB", (300, 420), "white"),))],
}


def _inputs(engine, messages):
    image = messages[0].images[0]
    processed = engine.files.family.preprocess([image], engine.files.image_processor)
    ids = engine.prompt.encode(messages, processed.grids)
    return ids, processed.pixel_values[0]


@pytest.mark.parametrize("case", list(QUESTIONS))
def test_greedy_tokens_identical_to_transformers(case: str, engine, reference) -> None:
    messages = QUESTIONS[case]
    ours = engine.generate(messages, GenerationSettings(max_new_tokens=24))
    ids, pixels = _inputs(engine, messages)
    with torch.no_grad():
        theirs = reference.generate(input_ids=torch.from_numpy(ids)[None], pixel_values=torch.from_numpy(pixels),
                                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=24, do_sample=False, eos_token_id=list(engine.files.stop_ids),
                                    pad_token_id=0)
    theirs_new = theirs[0, len(ids):].tolist()
    assert ours.token_ids == theirs_new[:len(ours.token_ids)]
    assert len(ours.token_ids) == len(theirs_new)


def test_first_logits_match_transformers(engine, reference) -> None:
    messages = QUESTIONS["photo, a question"]
    ours = engine.teacher_forced_logits(messages, [])[0]
    ids, pixels = _inputs(engine, messages)
    with torch.no_grad():
        theirs = reference(input_ids=torch.from_numpy(ids)[None], pixel_values=torch.from_numpy(pixels)).logits[0, -1]
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4, rtol=1e-4)


def test_prompt_ids_identical_to_transformers_llava_processor(engine) -> None:
    processor = transformers.AutoProcessor.from_pretrained(TINY)
    messages = QUESTIONS["photo, a question"]
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": messages[0].text}]}]
    text = processor.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    theirs = processor(text=text, images=[messages[0].images[0]], return_tensors="np")
    ids, pixels = _inputs(engine, messages)
    assert theirs["input_ids"][0].tolist() == ids.tolist()
    assert theirs["pixel_values"].shape == (1, *pixels.shape[1:])


# --- the project's graphs against the official release's way of making them --------------------

@pytest.fixture(scope="module")
def official_layout(tmp_path_factory, reference):
    """The same weights traced by torch.onnx as the official release's files were (decoder
    included, dynamic int8), beside the committed folder's side files."""
    import shutil

    folder = tmp_path_factory.mktemp("traced") / "tiny-fastvlm-traced"
    shutil.copytree(TINY, folder)
    shutil.rmtree(folder / "onnx")
    _build_script().trace_official(reference, folder)
    model = VisionLanguageModel.load(folder, variant="fp32", threads=1)
    yield model
    model.close()


def test_the_projects_graphs_answer_as_the_traced_official_layout_does(engine, official_layout) -> None:
    """Same greedy tokens and, position by position, the same logits within 1e-4, from graphs
    that decode differently: the project's decoder writes its cache in place, the traced one
    copies it."""
    assert type(engine.new_decoder_state()).__name__ == "InPlaceDecoderState"
    assert type(official_layout.new_decoder_state()).__name__ == "DecoderState"
    for messages in QUESTIONS.values():
        ours = engine.generate(messages, GenerationSettings(max_new_tokens=24))
        theirs = official_layout.generate(messages, GenerationSettings(max_new_tokens=24))
        assert ours.token_ids == theirs.token_ids
        np.testing.assert_allclose(engine.teacher_forced_logits(messages, ours.token_ids),
                                   official_layout.teacher_forced_logits(messages, ours.token_ids), atol=1e-4, rtol=1e-4)


def test_the_committed_folder_is_what_the_build_script_writes(tmp_path: Path) -> None:
    import hashlib

    _build_script().write_folder(tmp_path / "tiny")

    def digests(folder: Path) -> dict[str, str]:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    assert digests(tmp_path / "tiny") == digests(TINY)


def test_models_export_writes_a_fastvlm_checkpoint_as_the_committed_graphs(tmp_path: Path, engine, reference) -> None:
    """`models export` on a transformers FastVLM checkpoint folder (save_pretrained, model_type
    fast_vlm): the project's exporter, checked against transformers, gives the committed graphs'
    answers."""
    import shutil

    from smolvlm_desktop.cli import EXIT_OK, main

    checkpoint = tmp_path / "checkpoint"
    reference.save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                 "generation_config.json"):
        shutil.copy(TINY / name, checkpoint / name)
    assert main(["models", "export", str(checkpoint), str(tmp_path / "out")]) == EXIT_OK
    exported = VisionLanguageModel.load(tmp_path / "out", variant="fp32", threads=1)
    try:
        for messages in QUESTIONS.values():
            settings = GenerationSettings(max_new_tokens=12)
            assert exported.generate(messages, settings).token_ids == engine.generate(messages, settings).token_ids
    finally:
        exported.close()
