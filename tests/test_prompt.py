"""Chat template, image-token expansion and streaming decode, on the tiny model's real tokenizer
(49280 tokens, the official special-token ids) and against the transformers Idefics3 processor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine.files import ModelFiles, load_model_files
from smolvlm_desktop.engine.processor import preprocess
from smolvlm_desktop.engine.prompt import PromptBuilder, TextStreamer, image_placeholder
from smolvlm_desktop.engine.types import EngineError, Message, ModelFolderError

IMAGE_ID, FAKE_ID, GLOBAL_ID, ROW1_COL1_ID = 49190, 49189, 49152, 49153
SEQ = 16  # the tiny model's image tokens per tile


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def files(tiny_model_dir: Path) -> ModelFiles:
    return load_model_files(tiny_model_dir)


@pytest.fixture(scope="module")
def builder(files: ModelFiles) -> PromptBuilder:
    return PromptBuilder.from_files(files)


def copy_model(src: Path, dst: Path) -> Path:
    """The tiny model's configs and tokenizer. Its graphs are empty placeholder files: a folder
    must list a complete variant to load, but prompts never open the graphs."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("onnx"))
    (dst / "onnx").mkdir()
    for graph in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        (dst / "onnx" / f"{graph}.onnx").write_bytes(b"")
    return dst


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


# --- template ----------------------------------------------------------------------------

def test_one_image_turn_renders_as_the_official_template_does(builder: PromptBuilder) -> None:
    messages = [Message("user", "Describe this image.", images=(photo(10, 10),))]
    assert builder.render(messages) == (
        "<|im_start|>User:<image>Describe this image.<end_of_utterance>\nAssistant:")


def test_a_turn_starting_with_text_gets_a_space_and_turns_are_separated(builder: PromptBuilder) -> None:
    messages = [Message("user", "Hi"), Message("assistant", "Hello."), Message("user", "", (photo(5, 5),))]
    assert builder.render(messages, add_generation_prompt=False) == (
        "<|im_start|>User: Hi<end_of_utterance>\nAssistant: Hello.<end_of_utterance>\n"
        "User:<image><end_of_utterance>\n")


def test_template_helpers_and_special_tokens_like_transformers(files: ModelFiles) -> None:
    template = ("{{ bos_token }}{{ messages | tojson }}{% if messages | length > 5 %}"
                "{{ raise_exception('too long') }}{% endif %}{{ eos_token }}")
    b = PromptBuilder(PromptBuilder.from_files(files).tokenizer, template, SEQ,
                      {"bos_token": "<s>", "eos_token": "</s>"})
    assert b.render([Message("user", "a<b> é")]) == (
        '<s>[{"role": "user", "content": [{"type": "text", "text": "a<b> é"}]}]</s>')
    with pytest.raises(ModelFolderError, match="chat template failed: too long"):
        b.render([Message("user", "x")] * 6)


def test_special_tokens_fall_back_to_special_tokens_map_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["bos_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    edit_json(folder / "chat_template.json", chat_template="{{ bos_token }}|{{ eos_token }}")
    assert PromptBuilder.from_files(load_model_files(folder)).render([]) == "<|im_start|>|<end_of_utterance>"


def test_a_template_that_does_not_parse(builder: PromptBuilder) -> None:
    with pytest.raises(ModelFolderError, match="chat template does not parse"):
        PromptBuilder(builder.tokenizer, "{% for %}", SEQ, {})


def test_message_text_may_not_forge_an_image(builder: PromptBuilder) -> None:
    with pytest.raises(EngineError, match="may not contain the text <image>"):
        builder.encode([Message("user", "what is <image>?", images=(photo(5, 5),))], [(0, 0)])


# --- image expansion ---------------------------------------------------------------------

def test_split_and_unsplit_placeholders() -> None:
    tile = "<image>" * 2
    assert image_placeholder(0, 0, 2) == f"<fake_token_around_image><global-img>{tile}<fake_token_around_image>"
    assert image_placeholder(2, 2, 2) == (
        f"<fake_token_around_image><row_1_col_1>{tile}<fake_token_around_image><row_1_col_2>{tile}\n"
        f"<fake_token_around_image><row_2_col_1>{tile}<fake_token_around_image><row_2_col_2>{tile}\n"
        f"\n<fake_token_around_image><global-img>{tile}<fake_token_around_image>")


def test_encode_expands_each_image_into_its_grid(builder: PromptBuilder) -> None:
    messages = [Message("user", "Compare.", images=(photo(5, 5), photo(6, 6)))]
    ids = builder.encode(messages, [(2, 3), (0, 0)])
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert (ids == IMAGE_ID).sum() == (2 * 3 + 1 + 1) * SEQ
    assert (ids == GLOBAL_ID).sum() == 2
    assert (ids == FAKE_ID).sum() == 6 + 2 + 2  # one per tile, two around each global image
    first = int(np.flatnonzero(ids == FAKE_ID)[0])
    assert ids[first + 1] == ROW1_COL1_ID
    assert list(ids[first + 2:first + 2 + SEQ]) == [IMAGE_ID] * SEQ
    assert builder.decode(ids).endswith("Compare.\nAssistant:")


def test_encode_refuses_a_mismatch_between_images_and_grids(builder: PromptBuilder) -> None:
    with pytest.raises(EngineError, match="the prompt has 1 images but 2 were processed"):
        builder.encode([Message("user", "x", images=(photo(5, 5),))], [(0, 0), (0, 0)])


def plain_text_grid_tokens(tiny_model_dir: Path, dst: Path) -> Path:
    """A tokenizer like SmolVLM-Instruct (2.2B)'s: <global-img> and <row_r_col_c> are not tokens."""
    folder = copy_model(tiny_model_dir, dst)
    grid_token = lambda text: text == "<global-img>" or text.startswith("<row_")  # noqa: E731
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tok["added_tokens"] = [t for t in tok["added_tokens"] if not grid_token(t["content"])]
    (folder / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    added = json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
    (folder / "added_tokens.json").write_text(
        json.dumps({k: v for k, v in added.items() if not grid_token(k)}), encoding="utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                          if not grid_token(v["content"])}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_grid_markers_that_are_plain_text_are_tokenised_as_text(tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    b = PromptBuilder.from_files(load_model_files(plain_text_grid_tokens(tiny_model_dir, tmp_path / "m")))
    assert b.tokenizer.token_to_id("<global-img>") is None
    ids = b.encode([Message("user", "x", images=(photo(5, 5),))], [(1, 2)])
    assert (ids == b.tokenizer.token_to_id("<image>")).sum() == 3 * SEQ
    assert (ids == b.tokenizer.token_to_id("<fake_token_around_image>")).sum() == 4
    text = b.decode(ids)  # special tokens skipped: only the plain-text markers remain
    assert text == "User:<row_1_col_1><row_1_col_2>\n\n<global-img>x\nAssistant:"


# --- streaming -----------------------------------------------------------------------------

STREAM_TEXTS = {
    "emoji": "Ok 🙂👍🏽 done 🐕‍🦺!",
    "CJK": "这是一只狗。日本語のテキスト、한국어",
    "accents": "Café naïve — élève, Ærø, ñandú",
    "mixed": "A 🚗 in Zürich: 速い!\n\tend",
}


@pytest.mark.parametrize("name", list(STREAM_TEXTS))
def test_streamed_text_equals_the_full_decode(builder: PromptBuilder, name: str) -> None:
    ids = builder.tokenizer.encode(STREAM_TEXTS[name], add_special_tokens=False).ids
    streamer = builder.streamer()
    deltas = [streamer.push(i) for i in ids]
    tail = streamer.flush()
    assert "".join(deltas) + tail == builder.decode(ids) == STREAM_TEXTS[name]
    assert not any("\ufffd" in d for d in deltas), "a delta split a character"
    assert "" in deltas, "no token carried a partial character: the case tests nothing"


def test_special_tokens_are_skipped_while_streaming(builder: PromptBuilder) -> None:
    ids = builder.tokenizer.encode("<global-img>naïve 🙂<image>x", add_special_tokens=False).ids
    assert GLOBAL_ID in ids and IMAGE_ID in ids
    streamer = builder.streamer()
    text = "".join(streamer.push(i) for i in ids) + streamer.flush()
    assert text == builder.decode(ids) == "naïve 🙂x"


def test_an_unfinished_character_is_held_back_then_flushed_as_a_full_decode_would(
        builder: PromptBuilder) -> None:
    ids = builder.tokenizer.encode("a🙂", add_special_tokens=False).ids
    partial = ids[:-1]  # "a" and the first bytes of the emoji
    streamer = builder.streamer()
    assert "".join(streamer.push(i) for i in partial) == "a"
    assert streamer.flush() == builder.decode(partial)[1:] == "\ufffd"
    assert streamer.flush() == ""


def test_streaming_keeps_spaces_with_a_sentencepiece_style_decoder() -> None:
    """Decoders like Metaspace drop the space of a window's first token; the window's context
    token must absorb that, or every streamed word would lose its space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    text = "the small dog sat on the mat near the big red car"
    tokenizer.train_from_iterator([text] * 3, trainers.BpeTrainer(special_tokens=["<unk>"], vocab_size=60))
    ids = tokenizer.encode(text).ids
    assert "".join(tokenizer.decode([i]) for i in ids) != text  # decoding alone loses the spaces
    streamer = TextStreamer(tokenizer)
    assert "".join(streamer.push(i) for i in ids) + streamer.flush() == tokenizer.decode(ids) == text


def test_each_push_decodes_a_short_window(builder: PromptBuilder) -> None:
    """O(1) per token: the window never reaches back to the start of a long answer."""
    ids = builder.tokenizer.encode("Un café 🙂 中文. " * 300, add_special_tokens=False).ids
    streamer = TextStreamer(builder.tokenizer)
    longest_window = 0
    for i in ids:
        streamer.push(i)
        longest_window = max(longest_window, len(streamer.ids) - streamer.prefix_offset)
    assert len(ids) > 1500
    assert longest_window <= 8


# --- against transformers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference(transformers, tiny_model_dir: Path):
    return transformers.AutoProcessor.from_pretrained(tiny_model_dir)


def hf_messages(messages: list[Message]) -> list[dict]:
    """The messages as a transformers user writes them by hand."""
    return [{"role": m.role, "content": [{"type": "image"} for _ in m.images]
             + ([{"type": "text", "text": m.text}] if m.text else [])} for m in messages]


def reference_ids(processor, messages: list[Message], detail: int | None = None) -> list[int]:
    text = processor.apply_chat_template(hf_messages(messages), add_generation_prompt=True)
    images = [img for m in messages for img in m.images]
    kwargs = {"size": {"longest_edge": detail}} if detail else {}
    out = processor(text=text, images=[images] if images else None, **kwargs)
    return list(out["input_ids"][0])


def our_ids(files: ModelFiles, builder: PromptBuilder, messages: list[Message],
            detail: int | None = None) -> list[int]:
    images = [img for m in messages for img in m.images]
    grids = preprocess(images, files.image_processor, detail).grids if images else []
    return builder.encode(messages, grids).tolist()


ID_CASES = {
    "one image": ([Message("user", "Describe this image.", (photo(300, 200, 1),))], None),
    "two images in one turn": ([Message("user", "Compare these.", (photo(100, 80, 2), photo(70, 150, 3)))], None),
    "two-turn chat": ([Message("user", "What is in this picture?", (photo(160, 120, 4),)),
                       Message("assistant", "A small brown dog."),
                       Message("user", "And the car? Ünïcödé 🙂 中文")], None),
    "text-only turn": ([Message("user", "Write a haiku about the sea.")], None),
    "unsplit image (detail = one tile)": ([Message("user", "What is it?", (photo(120, 90, 5),))], 64),
    "system prompt and an image without text": ([Message("system", "Answer briefly."),
                                                 Message("user", "", (photo(90, 200, 6),))], None),
}


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("case", list(ID_CASES))
def test_ids_identical_to_transformers(case: str, reference, files: ModelFiles,
                                       builder: PromptBuilder) -> None:
    messages, detail = ID_CASES[case]
    assert builder.render(messages) == reference.apply_chat_template(hf_messages(messages),
                                                                     add_generation_prompt=True)
    expected = reference_ids(reference, messages, detail)
    assert our_ids(files, builder, messages, detail) == expected
    images = sum(len(m.images) for m in messages)
    assert expected.count(IMAGE_ID) >= images * SEQ  # the case has the images it claims


@pytest.mark.slow
@pytest.mark.reference
def test_plain_text_grid_markers_identical_to_transformers(transformers, tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    folder = plain_text_grid_tokens(tiny_model_dir, tmp_path / "m")
    processor = transformers.AutoProcessor.from_pretrained(folder)
    files = load_model_files(folder)
    messages = [Message("user", "Describe this image.", (photo(300, 200, 7),))]
    expected = reference_ids(processor, messages)
    assert processor.tokenizer.convert_tokens_to_ids("<global-img>") in (None, 0)  # unknown there too
    assert our_ids(files, PromptBuilder.from_files(files), messages) == expected


def template_folder(tiny_model_dir: Path, tmp_path: Path, source: str) -> Path:
    """The tiny model with its template in one place only, marked so we know which was read."""
    folder = copy_model(tiny_model_dir, tmp_path / source)
    template = json.loads((folder / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    template = template.replace("<|im_start|>", f"<|im_start|>[{source}]")
    (folder / "chat_template.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    if source == "chat_template.json":
        (folder / source).write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    elif source == "chat_template.jinja":
        (folder / source).write_text(template, encoding="utf-8")
    else:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("source", ["chat_template.json", "chat_template.jinja", "tokenizer_config.json"])
def test_chat_template_from_each_source_renders_like_transformers(
        source: str, transformers, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = template_folder(tiny_model_dir, tmp_path, source)
    messages = [Message("user", "What is this?", (photo(50, 50),)), Message("assistant", "A cat."),
                Message("user", "Sure?")]
    processor = transformers.AutoProcessor.from_pretrained(folder)
    if source == "tokenizer_config.json":  # transformers' processor does not fall back; its tokenizer does
        expected = processor.tokenizer.apply_chat_template(hf_messages(messages), tokenize=False,
                                                           add_generation_prompt=True)
    else:
        expected = processor.apply_chat_template(hf_messages(messages), add_generation_prompt=True)
    ours = PromptBuilder.from_files(load_model_files(folder)).render(messages)
    assert ours.startswith(f"<|im_start|>[{source}]User:<image>What is this?")
    assert ours == expected
