"""Reading a model folder: real JSON files in tmp_path, copied from the bundled tiny model.

The .onnx files in these folders are empty placeholders: reading a folder only checks which
graphs exist and never opens them (the runtime does that), so their contents do not matter here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smolvlm_desktop.engine.files import (
    ImageProcessorConfig,
    ModelFiles,
    expected_files,
    load_model_files,
)
from smolvlm_desktop.engine.types import ModelFolderError

JSON_FILES = ("config.json", "generation_config.json", "preprocessor_config.json",
              "processor_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.json")


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def add_placeholder_graphs(folder: Path, *variants: str) -> None:
    (folder / "onnx").mkdir(exist_ok=True)
    for variant in variants:
        for name in expected_files(variant):
            (folder / name).write_bytes(b"")


@pytest.fixture
def folder(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A copy of the tiny model's configs and tokenizer, with fp32 and int8 placeholder graphs."""
    dst = tmp_path / "SmolVLM-Test"
    dst.mkdir()
    for name in JSON_FILES:
        shutil.copy(tiny_model_dir / name, dst / name)
    add_placeholder_graphs(dst, "fp32", "int8")
    return dst


def error_of(folder: Path) -> str:
    with pytest.raises(ModelFolderError) as info:
        load_model_files(folder)
    return str(info.value)


# --- reading the released layout ----------------------------------------------------------

def test_the_bundled_tiny_model_reads_with_every_number_from_its_files(tiny_model_dir: Path) -> None:
    files = load_model_files(tiny_model_dir)
    assert files.name == "tiny-smolvlm"
    assert files.image_processor == ImageProcessorConfig(
        longest_edge=256, tile_size=64, do_resize=True, do_image_splitting=True, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5), resample=1, do_pad=True, do_convert_rgb=True)
    assert files.image_seq_len == 16
    assert files.image_token_id == 49190
    assert files.stop_ids == (2, 49279)  # generation_config's list; the tokenizer eos repeats 49279
    assert set(files.variants) == {"fp32", "int8"}
    assert files.graph_path("decoder_model_merged", "int8") == (
        tiny_model_dir / "onnx" / "decoder_model_merged_int8.onnx")
    assert files.chat_template.startswith("<|im_start|>{% for message in messages %}")
    assert files.tokenizer_path == tiny_model_dir / "tokenizer.json"
    assert files.tokenizer_config["eos_token"] == "<end_of_utterance>"


def test_a_folder_in_the_hugging_face_cache_is_named_after_its_repository(folder: Path,
                                                                           tmp_path: Path) -> None:
    snapshot = tmp_path / "models--HuggingFaceTB--SmolVLM-256M-Instruct" / "snapshots" / "0123abcd"
    shutil.copytree(folder, snapshot)
    assert load_model_files(snapshot).name == "SmolVLM-256M-Instruct"
    assert load_model_files(folder).name == "SmolVLM-Test"


def test_flat_preprocessor_config_as_officially_released(folder: Path) -> None:
    write_json(folder / "processor_config.json", {"image_seq_len": 64, "processor_class": "Idefics3Processor"})
    flat = read(folder / "preprocessor_config.json")
    flat.update(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512},
                image_mean=[0.1, 0.2, 0.3], do_image_splitting=False)
    write_json(folder / "preprocessor_config.json", flat)
    files = load_model_files(folder)
    assert (files.image_processor.longest_edge, files.image_processor.tile_size) == (2048, 512)
    assert files.image_processor.image_mean == (0.1, 0.2, 0.3)
    assert files.image_processor.do_image_splitting is False
    assert files.image_seq_len == 64


def test_nested_image_processor_as_newer_transformers_save_it(folder: Path) -> None:
    nested = read(folder / "preprocessor_config.json")
    nested.update(size={"longest_edge": 1536}, max_image_size={"longest_edge": 384})
    (folder / "preprocessor_config.json").unlink()
    write_json(folder / "processor_config.json",
               {"image_processor": nested, "image_seq_len": 81, "processor_class": "Idefics3Processor"})
    files = load_model_files(folder)
    assert (files.image_processor.longest_edge, files.image_processor.tile_size) == (1536, 384)
    assert files.image_seq_len == 81


def test_nested_settings_win_over_a_stale_flat_file_as_in_transformers(folder: Path) -> None:
    nested = read(folder / "preprocessor_config.json")
    nested["max_image_size"] = {"longest_edge": 128}
    write_json(folder / "processor_config.json", {"image_processor": nested, "image_seq_len": 16})
    assert load_model_files(folder).image_processor.tile_size == 128


def test_no_image_processor_settings_at_all(folder: Path) -> None:
    (folder / "preprocessor_config.json").unlink()
    assert "no image processor settings" in error_of(folder)


def test_image_seq_len_is_computed_from_the_vision_config_when_absent(folder: Path) -> None:
    write_json(folder / "processor_config.json", {"processor_class": "Idefics3Processor"})
    assert load_model_files(folder).image_seq_len == 16  # (64 / 8)² / 2²
    config = read(folder / "config.json")
    config["vision_config"].update(image_size=512, patch_size=16)
    config["scale_factor"] = 4
    write_json(folder / "config.json", config)
    assert load_model_files(folder).image_seq_len == 64  # SmolVLM-256M: (512 / 16)² / 4²


# --- chat template sources ----------------------------------------------------------------

def test_chat_template_from_chat_template_json(folder: Path) -> None:
    write_json(folder / "chat_template.json", {"chat_template": "from json"})
    (folder / "chat_template.jinja").write_text("from jinja", encoding="utf-8")
    assert load_model_files(folder).chat_template == "from json"  # the legacy file wins, as in transformers


def test_chat_template_from_chat_template_jinja(folder: Path) -> None:
    (folder / "chat_template.json").unlink()
    (folder / "chat_template.jinja").write_text("{{ 'from jinja' }}\n", encoding="utf-8")
    assert load_model_files(folder).chat_template == "{{ 'from jinja' }}\n"


def test_chat_template_from_tokenizer_config(folder: Path) -> None:
    (folder / "chat_template.json").unlink()
    tok = read(folder / "tokenizer_config.json")
    tok["chat_template"] = "from tokenizer_config"
    write_json(folder / "tokenizer_config.json", tok)
    assert load_model_files(folder).chat_template == "from tokenizer_config"


def test_no_chat_template_anywhere(folder: Path) -> None:
    (folder / "chat_template.json").unlink()
    tok = read(folder / "tokenizer_config.json")
    del tok["chat_template"]
    write_json(folder / "tokenizer_config.json", tok)
    assert "has no chat template" in error_of(folder)


# --- stop ids -------------------------------------------------------------------------------

@pytest.mark.parametrize("eos, expected", [
    (2, (2, 49279)),  # an int, plus the tokenizer's eos <end_of_utterance>
    ([0, 2], (0, 2, 49279)),  # a list
    ([49279], (49279,)),  # the tokenizer's eos already listed: not repeated
])
def test_stop_ids_from_generation_config_and_tokenizer_eos(folder: Path, eos: object,
                                                          expected: tuple[int, ...]) -> None:
    write_json(folder / "generation_config.json", {"eos_token_id": eos})
    assert load_model_files(folder).stop_ids == expected


def test_stop_ids_look_the_eos_token_up_in_tokenizer_json(folder: Path) -> None:
    (folder / "generation_config.json").unlink()
    tok = read(folder / "tokenizer_config.json")
    tok["eos_token"] = {"content": "<|endoftext|>", "special": True}
    write_json(folder / "tokenizer_config.json", tok)
    # text_config's eos (2), the tokenizer's eos (<|endoftext|> = 0), <end_of_utterance> (49279)
    assert load_model_files(folder).stop_ids == (2, 0, 49279)


# --- variants ----------------------------------------------------------------------------

def files_with(folder: Path, *variants: str) -> ModelFiles:
    shutil.rmtree(folder / "onnx")
    add_placeholder_graphs(folder, *variants)
    return load_model_files(folder)


@pytest.mark.parametrize("present, chosen", [
    (("fp32", "fp16", "q4", "uint8", "int8", "quantized"), "int8"),
    (("fp32", "fp16", "uint8", "quantized"), "uint8"),
    (("fp32", "quantized"), "quantized"),
    (("fp32", "fp16", "q4f16"), "fp32"),
    (("q4", "fp16"), "fp16"),  # nothing CPU-friendly: the first complete one
])
def test_default_variant_order_for_the_cpu(folder: Path, present: tuple[str, ...], chosen: str) -> None:
    assert files_with(folder, *present).choose_variant() == chosen


def test_a_requested_variant_is_honoured(folder: Path) -> None:
    files = files_with(folder, "fp32", "int8", "bnb4")
    assert files.choose_variant("bnb4") == "bnb4"
    assert files.graph_path("vision_encoder", "bnb4").name == "vision_encoder_bnb4.onnx"


def test_an_unknown_variant_names_the_known_and_present_ones(folder: Path) -> None:
    files = load_model_files(folder)
    with pytest.raises(ModelFolderError, match=r"unknown variant 'int4'.*fp32, fp16, int8.*this folder has: fp32, int8"):
        files.choose_variant("int4")


def test_an_incomplete_variant_names_the_missing_file(folder: Path) -> None:
    add_placeholder_graphs(folder, "fp16")
    (folder / "onnx" / "decoder_model_merged_fp16.onnx").unlink()
    files = load_model_files(folder)
    assert "fp16" not in files.variants
    with pytest.raises(ModelFolderError) as info:
        files.choose_variant("fp16")
    message = str(info.value)
    assert "onnx/vision_encoder_fp16.onnx, onnx/embed_tokens_fp16.onnx, onnx/decoder_model_merged_fp16.onnx" in message
    assert "lacks onnx/decoder_model_merged_fp16.onnx;" in message
    assert "complete variants here: fp32, int8" in message


# --- errors ----------------------------------------------------------------------------------

def test_missing_folder(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nowhere") == f"model folder {tmp_path / 'nowhere'} does not exist"


def test_a_file_instead_of_a_folder(folder: Path) -> None:
    assert "is a file, not a model folder" in error_of(folder / "config.json")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_missing_required_file(folder: Path, name: str) -> None:
    (folder / name).unlink()
    assert error_of(folder) == f"{folder} is not a SmolVLM model folder: {name} is missing"


def test_no_onnx_folder(folder: Path) -> None:
    shutil.rmtree(folder / "onnx")
    message = error_of(folder)
    assert f"{folder} has no onnx/ folder" in message
    assert "onnx/vision_encoder_int8.onnx, onnx/embed_tokens_int8.onnx" in message


def test_no_complete_variant_names_the_files_expected_and_found(folder: Path) -> None:
    shutil.rmtree(folder / "onnx")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "vision_encoder.onnx").write_bytes(b"")
    (folder / "onnx" / "decoder_model.onnx").write_bytes(b"")  # an unmerged export: not usable
    message = error_of(folder)
    assert "has no complete set of graphs" in message
    assert "onnx/vision_encoder.onnx, onnx/embed_tokens.onnx, onnx/decoder_model_merged.onnx" in message
    assert "found decoder_model.onnx, vision_encoder.onnx" in message


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json", "tokenizer.json",
                                  "generation_config.json", "chat_template.json"])
def test_unreadable_json_names_the_file_and_the_error(folder: Path, name: str) -> None:
    (folder / name).write_text('{"a": 1,\n  oops}', encoding="utf-8")
    message = error_of(folder)
    assert message.startswith(f"{folder / name} is not valid JSON: ")
    assert "line 2 column 3" in message


def test_json_that_is_not_an_object(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    assert error_of(folder) == f"{folder / 'config.json'} should hold a JSON object, not list"


def test_image_processor_setting_of_the_wrong_shape(folder: Path) -> None:
    flat = read(folder / "preprocessor_config.json")
    flat["max_image_size"] = 512
    write_json(folder / "preprocessor_config.json", flat)
    assert "'max_image_size' should be an object with 'longest_edge', got 512" in error_of(folder)


def test_config_without_image_token_id(folder: Path) -> None:
    config = read(folder / "config.json")
    del config["image_token_id"]
    write_json(folder / "config.json", config)
    assert "config.json lacks image_token_id" in error_of(folder)


# --- a quantised variant with the fp32 vision graph -------------------------------------------

def test_a_quantised_variant_without_its_own_vision_graph_reads_pictures_with_the_fp32_one(folder: Path) -> None:
    """How FastVLM's official release is pulled (catalog `fp32_vision_for`): its _int8 vision
    graph runs ConvInteger with int8 weights, several times slower than fp32 on a CPU."""
    (folder / "onnx" / "vision_encoder_int8.onnx").unlink()
    files = load_model_files(folder)
    assert files.choose_variant() == "int8"
    assert files.graph_path("vision_encoder", "int8") == folder / "onnx" / "vision_encoder.onnx"
    assert files.graph_path("decoder_model_merged", "int8") == folder / "onnx" / "decoder_model_merged_int8.onnx"


def test_a_variant_with_its_own_vision_graph_keeps_it(folder: Path) -> None:
    files = load_model_files(folder)
    assert files.graph_path("vision_encoder", "int8") == folder / "onnx" / "vision_encoder_int8.onnx"


def test_without_an_fp32_vision_graph_a_variant_missing_its_own_stays_incomplete(folder: Path) -> None:
    add_placeholder_graphs(folder, "fp16")  # so that the folder still has a complete variant
    (folder / "onnx" / "vision_encoder_int8.onnx").unlink()
    (folder / "onnx" / "vision_encoder.onnx").unlink()
    files = load_model_files(folder)
    assert "int8" not in files.variants
    with pytest.raises(ModelFolderError, match="lacks onnx/vision_encoder_int8.onnx"):
        files.choose_variant("int8")
