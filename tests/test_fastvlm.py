"""The FastVLM family: its processor against transformers', its folder, its prompt, and the
tiny random-weight FastVLM (smolvlm_desktop/data/tiny-fastvlm) run end to end by the engine.

The processor settings are those transformers' FastVLM conversion script writes (a
CLIPImageProcessor: shortest edge 1024 bicubic, centre crop 1024, mean 0, std 1; see
docs/FASTVLM_FORMAT.md). Tolerance: none; pixels must be identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine.families import FASTVLM, SMOLVLM, family_for
from smolvlm_desktop.engine.families.fastvlm import parse_clip_processor, shortest_edge_size
from tests.test_processor import photo

OFFICIAL_PREPROCESSOR = {
    "crop_size": {"height": 1024, "width": 1024}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.0, 0.0, 0.0],
    "image_processor_type": "CLIPImageProcessor", "image_std": [1.0, 1.0, 1.0],
    "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 1024},
}
TINY = Path(__file__).resolve().parent.parent / "smolvlm_desktop" / "data" / "tiny-fastvlm"


def test_the_family_follows_config_model_type() -> None:
    assert family_for({"model_type": "llava_qwen2"}) is FASTVLM
    assert family_for({"model_type": "fast_vlm"}) is FASTVLM
    assert family_for({"model_type": "idefics3"}) is SMOLVLM
    assert family_for({}) is SMOLVLM  # folders from before families existed


def test_the_short_side_becomes_the_target_and_the_long_side_is_truncated() -> None:
    assert shortest_edge_size(1536, 2048, 1024) == (1024, 1365)
    assert shortest_edge_size(2048, 1536, 1024) == (1365, 1024)
    assert shortest_edge_size(500, 500, 1024) == (1024, 1024)


def test_one_vision_pass_per_picture_whatever_its_size() -> None:
    cfg = parse_clip_processor(OFFICIAL_PREPROCESSOR, Path("preprocessor_config.json"))
    out = FASTVLM.preprocess([photo(2048, 1536, 1), photo(300, 90, 2)], cfg, longest_edge=512)
    assert out.pixel_values.shape == (1, 2, 3, 1024, 1024)
    assert out.grids == [(0, 0), (0, 0)]
    assert FASTVLM.vision_feeds(out.pixel_values[:, :1], out.pixel_attention_mask[:, :1])[
        "pixel_values"].shape == (1, 3, 1024, 1024)


CASES = {
    "landscape photo 2048x1536": photo(2048, 1536, 3),
    "portrait 600x900, scaled up": photo(600, 900, 4),
    "panorama 1500x200": photo(1500, 200, 5),
    "RGBA with varying alpha": photo(700, 500, 6, "RGBA"),
    "greyscale L": photo(640, 480, 7, "L"),
}


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_pixels_identical_to_transformers_clip_processor(case: str) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPImageProcessorPil(**{
        k: v for k, v in OFFICIAL_PREPROCESSOR.items() if k not in ("image_processor_type", "processor_class")})
    image = CASES[case]
    theirs = reference(images=[image], return_tensors="np")["pixel_values"]
    cfg = parse_clip_processor(OFFICIAL_PREPROCESSOR, Path("preprocessor_config.json"))
    ours = FASTVLM.preprocess([image], cfg).pixel_values[0]
    assert ours.shape == theirs.shape == (1, 3, 1024, 1024)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


# --- the tiny FastVLM, run by the engine ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_fastvlm():
    from smolvlm_desktop.engine.model import VisionLanguageModel

    model = VisionLanguageModel.load(TINY, variant="fp32", threads=1)
    yield model
    model.close()


def test_the_tiny_folder_reads_as_fastvlm_in_the_official_layout() -> None:
    from smolvlm_desktop.engine.files import load_model_files

    files = load_model_files(TINY)
    assert files.family is FASTVLM
    assert files.image_seq_len == 16  # (256 / 64)^2: processor_config.json's patch_size
    assert files.text_config["hidden_size"] == 64  # the flat llava_qwen2 config
    assert files.image_processor.tile_size == 256 and not files.image_processor.do_image_splitting
    assert files.stop_ids == (json.loads((TINY / "config.json").read_text())["eos_token_id"],)
    assert sorted(files.variants) == ["fp32", "int8"]
    assert sorted(p.name for p in (TINY / "onnx").iterdir()) == [
        "decoder_model_merged.onnx", "decoder_model_merged_int8.onnx", "decoder_model_merged_int8_prompt.onnx",
        "embed_tokens.onnx",
        "embed_tokens_int8.onnx", "vision_encoder.onnx", "vision_encoder_int8.onnx"]


def test_the_prompt_is_the_qwen2_template_with_one_image_token_per_feature_row(tiny_fastvlm) -> None:
    from smolvlm_desktop.engine.types import Message

    builder = tiny_fastvlm.prompt
    text = builder.expand(builder.render([Message("user", "What is it?", images=(photo(64, 64),))]), [(0, 0)])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    + "<image>" * 16 + "\nWhat is it?<|im_end|>\n<|im_start|>assistant\n")
    ids = builder.encode([Message("user", "What is it?", images=(photo(64, 64),))], [(0, 0)])
    assert int((ids == tiny_fastvlm.files.image_token_id).sum()) == 16


def test_the_engine_captions_a_photo_with_the_tiny_fastvlm(tiny_fastvlm) -> None:
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    settings = GenerationSettings(max_new_tokens=8)
    question = [Message("user", "Describe this picture.", images=(photo(400, 300, 21),))]
    first = tiny_fastvlm.generate(question, settings)
    assert first.stop_reason in ("max_tokens", "stop") and first.token_ids
    assert first.timings.tiles_read == 1  # one vision pass for the whole picture
    again = tiny_fastvlm.generate(question, settings)
    assert again.token_ids == first.token_ids and again.timings.tiles_read == 0  # features kept
    other = [Message("user", "Describe this picture.", images=(Image.new("RGB", (400, 300), "white"),))]
    difference = tiny_fastvlm.teacher_forced_logits(other, []) - tiny_fastvlm.teacher_forced_logits(question, [])
    assert np.abs(difference).max() > 1e-3  # the picture reaches the answer


def test_a_conversation_with_the_tiny_fastvlm_gives_the_same_answer_as_a_fresh_start(tiny_fastvlm) -> None:
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    settings = GenerationSettings(max_new_tokens=6)
    turn = [Message("user", "What is it?", images=(photo(300, 300, 23),))]
    chat = tiny_fastvlm.conversation()
    answer = chat.generate(turn, settings)
    follow = [*turn, Message("assistant", answer.text), Message("user", "And the colour?")]
    assert chat.generate(follow, settings).token_ids == tiny_fastvlm.generate(follow, settings).token_ids


def test_a_vision_graph_without_pixel_values_is_refused_with_the_family_named(tmp_path: Path) -> None:
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import ModelFolderError

    folder = tmp_path / "broken"
    shutil.copytree(TINY, folder)
    shutil.copy(folder / "onnx" / "embed_tokens.onnx", folder / "onnx" / "vision_encoder.onnx")
    with pytest.raises(ModelFolderError, match="FastVLM vision_encoder graph: expected inputs pixel_values"):
        VisionLanguageModel.load(folder, variant="fp32")


# --- the catalog: strengths, licence, asked before the first download -----------------------

FASTVLM_NAME = "FastVLM-0.5B"


def test_models_list_shows_fastvlm_strengths_and_licence(capsys: pytest.CaptureFixture) -> None:
    from smolvlm_desktop.cli import EXIT_OK, main

    assert main(["models", "list"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line[2:].split()[:2] == [FASTVLM_NAME, "available"])
    details = "\n".join(lines[at + 1:at + 3])
    assert "DocVQA 82.5" in details and "one 1024-px vision pass" in details
    assert "licence: apple-amlr" in details and "asks before the first download" in details


def test_models_list_shows_each_familys_published_scores_and_licence(capsys: pytest.CaptureFixture) -> None:
    """The chooser's one line per family (issue 18's published scores) and its licence, which only
    FastVLM's asks to accept."""
    from smolvlm_desktop.cli import EXIT_OK, main

    assert main(["models", "list"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    expected = {"SmolVLM-256M-Instruct": ("DocVQA 58.3", "licence: apache-2.0"),
                "SmolVLM-500M-Instruct": ("DocVQA 70.5", "licence: apache-2.0"),
                FASTVLM_NAME: ("DocVQA 82.5", "licence: apple-amlr (asks")}
    for name, (scores, licence) in expected.items():
        at = next(i for i, line in enumerate(lines) if line[2:].split()[:1] == [name])
        assert scores in lines[at + 1] and lines[at + 2].strip().startswith(licence), lines[at:at + 3]
    assert "asks" not in next(line for line in lines if "licence: apache-2.0" in line)



def test_models_list_names_the_family_of_an_installed_fastvlm_folder(capsys: pytest.CaptureFixture) -> None:
    """An imported folder has no catalog line to say what it is: its row names the family, so a
    FastVLM fine-tune is not taken for a SmolVLM."""
    from smolvlm_desktop.cli import EXIT_OK, main

    assert main(["models", "import", str(TINY), "--name", "my-fastvlm"]) == EXIT_OK
    assert main(["models", "list"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line[2:].split()[:1] == ["my-fastvlm"])
    assert row[2:].split()[1:3] == ["installed", "FastVLM"], row


@pytest.mark.loopback
def test_pull_of_fastvlm_asks_for_the_licence_first_and_touches_no_network(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from fake_hub import FakeHub
    from test_hub import tiny_repo

    from smolvlm_desktop import paths
    from smolvlm_desktop.cli import EXIT_ERROR, main

    with FakeHub([tiny_repo(FASTVLM_NAME, TINY)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        code = main(["models", "pull", FASTVLM_NAME, "--variant", "fp32"])
        assert server.requests == []
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "apple-amlr" in err and "--accept-licence" in err and "LICENSE" in err
    assert not (paths.models_dir() / FASTVLM_NAME).exists()


@pytest.mark.loopback
def test_pull_of_fastvlm_with_the_licence_accepted_installs_a_fastvlm_folder(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from fake_hub import FakeHub
    from test_hub import tiny_repo

    from smolvlm_desktop import hub, paths
    from smolvlm_desktop.cli import EXIT_OK, main
    from smolvlm_desktop.engine.files import load_model_files

    with FakeHub([tiny_repo(FASTVLM_NAME, TINY)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        code = main(["models", "pull", FASTVLM_NAME, "--variant", "fp32", "--accept-licence"])
    assert code == EXIT_OK, capsys.readouterr().err
    folder = paths.models_dir() / FASTVLM_NAME
    assert load_model_files(folder).family is FASTVLM
    assert (hub.read_manifest(folder) or {}).get("licence_accepted") == "apple-amlr"



@pytest.mark.loopback
def test_the_int8_pull_of_fastvlm_fetches_the_fp32_vision_graph_and_reads_pictures_with_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The official _int8 vision graph is ConvInteger with int8 weights (transformers.js's int8
    mode quantises every Conv), several times slower than fp32 on a CPU: the pull takes the fp32
    vision graph and the int8 text graphs. (The fake Hub serves the tiny's files, its own
    vision_encoder_int8.onnx included, so a pull that fetched it would show here.)"""
    from fake_hub import FakeHub
    from test_hub import tiny_repo

    from smolvlm_desktop import hub, paths
    from smolvlm_desktop.cli import EXIT_OK, main
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    assert hub.catalog_entry(FASTVLM_NAME).graph_files("int8") == [
        "onnx/vision_encoder.onnx", "onnx/embed_tokens_int8.onnx", "onnx/decoder_model_merged_int8.onnx"]
    with FakeHub([tiny_repo(FASTVLM_NAME, TINY)]) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        code = main(["models", "pull", FASTVLM_NAME, "--accept-licence"])  # as a user types it
    assert code == EXIT_OK, capsys.readouterr().err
    folder = paths.models_dir() / FASTVLM_NAME
    onnx_files = sorted(p.name for p in (folder / "onnx").iterdir())
    assert onnx_files == ["decoder_model_merged_int8.onnx", "embed_tokens_int8.onnx", "vision_encoder.onnx"]
    model = VisionLanguageModel.load(folder, threads=1)
    try:
        assert model.variant == "int8"
        picture = photo(500, 380, 7)
        answer = model.generate([Message("user", "Describe this picture.", images=(picture,))],
                                GenerationSettings(max_new_tokens=6))
        assert model.files.graph_path("vision_encoder", "int8").read_bytes() == (
            TINY / "onnx" / "vision_encoder.onnx").read_bytes()
        assert len(answer.token_ids) == 6
    finally:
        model.close()


# The bounds of SmolVLM's tiny int8 (tests/test_engine_reference.py), measured on enough
# positions to mean something: 20 prompts (a photo each, six questions in turn), 24 greedy
# tokens each, 500 teacher-forced positions (one flipped position moves top-1 by 0.002).
# Measured on the committed files (printed with -s; AMD EPYC Zen 4, AVX-512 VNNI): top-1
# 0.970, cosine 0.9982 (prompts 61-80 instead: 0.974, 0.9980); each graph int8 alone: vision
# 0.974, decoder 0.988, embedding 0.992. Before the tiny's LM head was tied to std-1 token
# embeddings (export/tiny_fastvlm.py; FastVLM-0.5B ties it too) its logits were close to
# independent draws over 341 tokens and int8 flipped the near ties: 0.870, 0.9962 over 477.
# What the tie changed: like SmolVLM's tiny (96% of its positions), the model now mostly
# repeats its input token (81% of these positions), a winner no int8 rounding flips; on the
# other 96 positions top-1 is 0.865, as before. So the bar still has to be shown to see the
# picture: test_the_top1_bar_would_catch_a_vision_graph_that_ignores_the_picture.
INT8_MIN_TOP1_AGREEMENT = 0.90
INT8_MIN_MEAN_COSINE = 0.99
FIDELITY_QUESTIONS = ("Describe this picture.", "What is written here?", "", "What colour is the car?",
                      "Read the sign.", "Caption.")
FIDELITY_SEEDS = range(41, 61)


def agreement(ours: list[np.ndarray], theirs: list[np.ndarray]) -> tuple[float, float, int]:
    """(top-1 agreement, mean logit cosine, positions) between two runs' teacher-forced logits."""
    a, b = np.concatenate(ours), np.concatenate(theirs)
    cosines = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(np.mean(a.argmax(-1) == b.argmax(-1))), float(np.mean(cosines)), len(a)


@pytest.fixture(scope="module")
def fidelity_cases(tiny_fastvlm) -> list[tuple[str, Image.Image, list[int], np.ndarray]]:
    """(question, photo, fp32's greedy answer, fp32's teacher-forced logits on it) per prompt."""
    from smolvlm_desktop.engine.types import GenerationSettings, Message

    cases = []
    for seed in FIDELITY_SEEDS:
        text, image = FIDELITY_QUESTIONS[seed % len(FIDELITY_QUESTIONS)], photo(500, 380, seed)
        messages = [Message("user", text, images=(image,))]
        answer = tiny_fastvlm.generate(messages, GenerationSettings(max_new_tokens=24)).token_ids
        cases.append((text, image, answer, tiny_fastvlm.teacher_forced_logits(messages, answer)))
    assert sum(len(logits) for *_, logits in cases) >= 400
    return cases


@pytest.fixture(scope="module")
def int8_vs_fp32(fidelity_cases) -> tuple[float, float]:
    """(top-1 agreement, mean logit cosine) of the int8 files against fp32, teacher-forced on
    fp32's own greedy answers."""
    from smolvlm_desktop.engine.model import VisionLanguageModel
    from smolvlm_desktop.engine.types import Message

    int8 = VisionLanguageModel.load(TINY, variant="int8", threads=1)
    quant = [int8.teacher_forced_logits([Message("user", text, images=(image,))], answer)
             for text, image, answer, _ in fidelity_cases]
    int8.close()
    top1, cosine, positions = agreement([logits for *_, logits in fidelity_cases], quant)
    print(f"FastVLM int8 vs fp32: top-1 agreement {top1:.3f}, mean logit cosine {cosine:.4f}, {positions} positions")
    return top1, cosine


@pytest.mark.slow
def test_int8_logits_stay_within_the_cosine_bar(int8_vs_fp32) -> None:
    assert int8_vs_fp32[1] >= INT8_MIN_MEAN_COSINE


@pytest.mark.slow
def test_int8_agrees_with_fp32_under_teacher_forcing(int8_vs_fp32) -> None:
    assert int8_vs_fp32[0] >= INT8_MIN_TOP1_AGREEMENT


@pytest.mark.slow
def test_the_top1_bar_would_catch_a_vision_graph_that_ignores_the_picture(tiny_fastvlm, fidelity_cases) -> None:
    """The same measure with a white page in place of each photo (fp32 both): a vision graph
    that lost the picture must fail both bars, or the int8 bars would not be worth passing on
    a model that mostly repeats its input token. Measured: top-1 0.816, cosine 0.790 (SmolVLM's
    tiny: 0.960 and 0.941, so there only the cosine bar would catch it)."""
    from smolvlm_desktop.engine.types import Message

    blind = []
    for text, image, answer, _ in fidelity_cases:
        white = Image.new("RGB", image.size, "white")
        blind.append(tiny_fastvlm.teacher_forced_logits([Message("user", text, images=(white,))], answer))
    top1, cosine, positions = agreement([logits for *_, logits in fidelity_cases], blind)
    print(f"FastVLM white page vs photo: top-1 agreement {top1:.3f}, mean logit cosine {cosine:.4f}, {positions} positions")
    assert top1 < INT8_MIN_TOP1_AGREEMENT and cosine < INT8_MIN_MEAN_COSINE
