"""The exporter and the committed tiny model.

The committed ONNX graphs are compared with the PyTorch model that build_tiny_checkpoint
makes from the same seed (real ONNX Runtime sessions, real transformers modules). Nothing is
mocked except, in one test named so, a missing torch installation.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from smolvlm_desktop import export
from smolvlm_desktop.export import ExportError
from smolvlm_desktop.export.tiny import SIZE_BUDGET

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "smolvlm_desktop" / "data" / "tiny-smolvlm"
LAYERS, KV_HEADS, HEAD_DIM, HIDDEN, VOCAB, TILE, IMAGE_SEQ_LEN = 2, 1, 8, 8, 49280, 64, 16
# Max abs diff allowed between the fp32 ONNX graphs and PyTorch (measured: ~1e-6 .. 5e-6).
TOLERANCE = 1e-4

OFFICIAL_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json",
    "processor_config.json", "chat_template.json",
    "onnx/vision_encoder.onnx", "onnx/embed_tokens.onnx", "onnx/decoder_model_merged.onnx",
    "onnx/vision_encoder_int8.onnx", "onnx/embed_tokens_int8.onnx", "onnx/decoder_model_merged_int8.onnx",
]


def session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(TINY / "onnx" / f"{name}.onnx"), options,
                                providers=["CPUExecutionProvider"])


def empty_past() -> dict[str, np.ndarray]:
    empty = np.zeros((1, KV_HEADS, 0, HEAD_DIM), dtype=np.float32)
    return {f"past_key_values.{i}.{k}": empty for i in range(LAYERS) for k in ("key", "value")}


# --- the committed folder, without torch -------------------------------------------------------
def test_committed_folder_has_the_official_files_within_budget() -> None:
    missing = [f for f in OFFICIAL_FILES if not (TINY / f).is_file()]
    assert missing == []
    size = sum(p.stat().st_size for p in TINY.rglob("*") if p.is_file())
    assert size <= SIZE_BUDGET


@pytest.mark.parametrize("variant", ["", "_int8"])
def test_graphs_have_the_official_names_and_dtypes(variant: str) -> None:
    def signature(name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        s = session(name + variant)
        return ([(i.name, i.type) for i in s.get_inputs()], [(o.name, o.type) for o in s.get_outputs()])

    past = [(f"past_key_values.{i}.{k}", "tensor(float)") for i in range(LAYERS) for k in ("key", "value")]
    present = [(f"present.{i}.{k}", "tensor(float)") for i in range(LAYERS) for k in ("key", "value")]
    assert signature("vision_encoder") == (
        [("pixel_values", "tensor(float)"), ("pixel_attention_mask", "tensor(bool)")],
        [("image_features", "tensor(float)")])
    assert signature("embed_tokens") == ([("input_ids", "tensor(int64)")], [("inputs_embeds", "tensor(float)")])
    assert signature("decoder_model_merged") == (
        [("inputs_embeds", "tensor(float)"), ("attention_mask", "tensor(int64)"),
         ("position_ids", "tensor(int64)"), *past],
        [("logits", "tensor(float)"), *present])


def test_graph_axes_are_dynamic() -> None:
    """Batch, sequence, past length and image count must not be frozen at trace-time sizes."""
    vision = session("vision_encoder")
    features, = vision.run(None, {"pixel_values": np.random.default_rng(0).normal(size=(1, 5, 3, TILE, TILE))
                                  .astype(np.float32),
                                  "pixel_attention_mask": np.ones((1, 5, TILE, TILE), dtype=bool)})
    assert features.shape == (5, IMAGE_SEQ_LEN, HIDDEN)
    embeds, = session("embed_tokens").run(None, {"input_ids": np.zeros((3, 11), dtype=np.int64)})
    assert embeds.shape == (3, 11, HIDDEN)
    outs = session("decoder_model_merged").run(None, {
        "inputs_embeds": np.ones((1, 9, HIDDEN), np.float32), "attention_mask": np.ones((1, 9), np.int64),
        "position_ids": np.arange(9)[None], **empty_past()})
    assert outs[0].shape == (1, 9, VOCAB)
    assert [o.shape for o in outs[1:]] == [(1, KV_HEADS, 9, HEAD_DIM)] * (2 * LAYERS)


def test_vision_encoder_drops_all_zero_padding_images() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(1, 3, 3, TILE, TILE)).astype(np.float32)
    pixels[0, 1] = 0
    mask = np.ones((1, 3, TILE, TILE), dtype=bool)
    mask[0, 1] = False
    with_padding, = session("vision_encoder").run(None, {"pixel_values": pixels, "pixel_attention_mask": mask})
    without, = session("vision_encoder").run(None, {"pixel_values": pixels[:, [0, 2]],
                                                    "pixel_attention_mask": mask[:, [0, 2]]})
    assert with_padding.shape == (2, IMAGE_SEQ_LEN, HIDDEN)
    np.testing.assert_allclose(with_padding, without, atol=1e-6)


def test_tokenizer_has_the_official_special_token_ids() -> None:
    tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB
    expected = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<global-img>": 49152,
                "<fake_token_around_image>": 49189, "<image>": 49190,
                "<|reserved_special_token_0|>": 49191, "<|reserved_special_token_87|>": 49278,
                "<end_of_utterance>": 49279}
    expected |= {f"<row_{r}_col_{c}>": 49153 + (r - 1) * 6 + (c - 1) for r in range(1, 7) for c in range(1, 7)}
    assert {t: tok.token_to_id(t) for t in expected} == expected
    ids = tok.encode("User:<image>Describe this image.<end_of_utterance>").ids
    assert 49190 in ids and ids[-1] == 49279
    assert len(ids) < 12  # common words are whole tokens, not single bytes


def test_configs_match_the_architecture() -> None:
    config = json.loads((TINY / "config.json").read_text())
    assert config["model_type"] == "idefics3" and config["image_token_id"] == 49190
    assert config["text_config"]["num_hidden_layers"] == LAYERS
    assert config["text_config"]["num_key_value_heads"] < config["text_config"]["num_attention_heads"]
    pre = json.loads((TINY / "preprocessor_config.json").read_text())
    assert pre["size"] == {"longest_edge": 4 * TILE} and pre["max_image_size"] == {"longest_edge": TILE}
    assert pre["resample"] == 1 and pre["do_image_splitting"] is True
    assert json.loads((TINY / "processor_config.json").read_text())["image_seq_len"] == IMAGE_SEQ_LEN
    gen = json.loads((TINY / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and {2, 49279} <= set(gen["eos_token_id"])


def test_logits_are_not_flat() -> None:
    """The larger-than-default init must give greedy decoding clear winners."""
    embeds, = session("embed_tokens").run(None, {"input_ids": np.array([[1, 4, 5, 6]], dtype=np.int64)})
    logits = session("decoder_model_merged").run(None, {
        "inputs_embeds": embeds, "attention_mask": np.ones((1, 4), np.int64),
        "position_ids": np.arange(4)[None], **empty_past()})[0][0, -1]
    top2 = np.sort(logits)[-2:]
    assert logits.std() > 1.0
    assert top2[1] - top2[0] > 1e-3


def test_missing_export_extra_is_explained_mocked_missing_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mocked: the extra is installed here. All three are hidden so that no real import runs
    # half-way (transformers caches "torch is missing" for the rest of the session).
    for name in ("torch", "transformers", "onnx"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ExportError, match=r"torch, transformers, onnx.*smolvlm-desktop\[export\]"):
        export.require_export_extra()


def test_unknown_quantization_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown quantization"):
        export.export_checkpoint(tmp_path, tmp_path / "out", quantize=("int3",))


# --- against PyTorch, same weights --------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_model(tmp_path_factory: pytest.TempPathFactory):
    """The PyTorch model the committed graphs were exported from: the checkpoint rebuilt
    from its seed, saved and loaded back the way export_checkpoint loads it."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from smolvlm_desktop.export.tiny import build_tiny_checkpoint

    return export.load_checkpoint(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt")))


@pytest.mark.reference
def test_tokenizer_loads_in_transformers_identically() -> None:
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(TINY)
    raw = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    for text in ["<|im_start|>User:<image>Describe this image.<end_of_utterance>\nAssistant:",
                 "Numbers 2024 and  spaces\n\n", "café ünïcode 日本語"]:
        assert auto(text)["input_ids"] == raw.encode(text).ids
        assert raw.decode(raw.encode(text).ids, skip_special_tokens=False) == text
    assert auto.eos_token_id == 49279


@pytest.mark.reference
def test_chat_template_renders_like_the_official_one() -> None:
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoProcessor.from_pretrained(TINY)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the car?"}]},
    ]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>User:<image>Describe this image.<end_of_utterance>\n"
        "Assistant: A dog.<end_of_utterance>\nUser: And the car?<end_of_utterance>\nAssistant:")
    assert processor.image_seq_len == IMAGE_SEQ_LEN


@pytest.mark.reference
def test_vision_encoder_matches_pytorch(torch_model) -> None:
    """Batch of two prompts, with a partly padded image and an all-zero padding image."""
    import torch

    gen = torch.Generator().manual_seed(5)
    pixels = torch.randn(2, 3, 3, TILE, TILE, generator=gen)
    mask = torch.ones(2, 3, TILE, TILE, dtype=torch.bool)
    mask[0, 1, 40:, :] = False
    mask[0, 1, :, 24:] = False
    pixels[0, 1] *= mask[0, 1]
    pixels[1, 2], mask[1, 2] = 0, False
    with torch.no_grad():
        ref = torch.cat(list(torch_model.model.get_image_features(pixels, mask).pooler_output))
    got, = session("vision_encoder").run(None, {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy()})
    assert got.shape == (5, IMAGE_SEQ_LEN, HIDDEN)
    np.testing.assert_allclose(got.reshape(-1, HIDDEN), ref.numpy(), rtol=0, atol=TOLERANCE)


@pytest.mark.reference
def test_embed_tokens_matches_pytorch(torch_model) -> None:
    import torch

    ids = torch.tensor([[0, 1, 2, 500, 49151, 49190, 49279]])
    with torch.no_grad():
        ref = torch_model.get_input_embeddings()(ids)
    got, = session("embed_tokens").run(None, {"input_ids": ids.numpy()})
    np.testing.assert_array_equal(got, ref.numpy())


@pytest.mark.reference
def test_decoder_prefill_then_cached_steps_match_pytorch(torch_model) -> None:
    import torch
    from transformers import DynamicCache

    decoder = session("decoder_model_merged")
    gen = torch.Generator().manual_seed(6)
    cache = DynamicCache(config=torch_model.config.get_text_config(decoder=True))
    past, start = empty_past(), 0
    for length in (7, 1, 1):
        embeds = torch.randn(1, length, HIDDEN, generator=gen)
        mask = torch.ones(1, start + length, dtype=torch.int64)
        positions = torch.arange(start, start + length)[None]
        with torch.no_grad():
            ref = torch_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                              **export.cache_argument(torch_model, cache))
        outs = decoder.run(None, {"inputs_embeds": embeds.numpy(), "attention_mask": mask.numpy(),
                                  "position_ids": positions.numpy(), **past})
        np.testing.assert_allclose(outs[0], ref.logits.numpy(), rtol=0, atol=TOLERANCE)
        assert outs[0][0, -1].argmax() == int(ref.logits[0, -1].argmax())
        for i in range(LAYERS):
            np.testing.assert_allclose(outs[1 + 2 * i], cache.layers[i].keys.numpy(), rtol=0, atol=TOLERANCE)
            np.testing.assert_allclose(outs[2 + 2 * i], cache.layers[i].values.numpy(), rtol=0, atol=TOLERANCE)
        past = {f"past_key_values.{i}.{k}": outs[1 + 2 * i + j]
                for i in range(LAYERS) for j, k in enumerate(("key", "value"))}
        start += length


@pytest.mark.reference
def test_decoder_left_padded_batch_matches_pytorch(torch_model) -> None:
    """A batch of two prompts of different lengths: the graph's own causal + padding mask
    must agree with transformers' mask on every real (non-padding) position."""
    import torch

    gen = torch.Generator().manual_seed(7)
    embeds = torch.randn(2, 6, HIDDEN, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = torch_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    past = {k: np.zeros((2, KV_HEADS, 0, HEAD_DIM), np.float32) for k in empty_past()}
    got = session("decoder_model_merged").run(None, {"inputs_embeds": embeds.numpy(), "attention_mask": mask.numpy(),
                                                     "position_ids": positions.numpy(), **past})[0]
    real = mask.bool().numpy()
    np.testing.assert_allclose(got[real], ref.numpy()[real], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("variant", ["decoder_model_merged", "decoder_model_merged_int8"])
def test_logits_to_keep_gives_the_last_rows_and_defaults_to_all(variant: str) -> None:
    """The optional input the engine sets for a prefill: the LM head runs on the last rows
    only. Left out, every position gets logits, as in the official graphs."""
    decoder = session(variant)
    assert [i.name for i in decoder.get_overridable_initializers()] == ["logits_to_keep"]
    rng = np.random.default_rng(3)
    feeds = {"inputs_embeds": rng.standard_normal((1, 6, HIDDEN)).astype(np.float32),
             "attention_mask": np.ones((1, 6), np.int64), "position_ids": np.arange(6)[None], **empty_past()}
    every = decoder.run(["logits"], feeds)[0]
    assert every.shape == (1, 6, VOCAB)
    for keep in (1, 2):
        last = decoder.run(["logits"], {**feeds, "logits_to_keep": np.array(keep, np.int64)})[0]
        np.testing.assert_allclose(last, every[:, -keep:], rtol=1e-5, atol=1e-5)


@pytest.mark.reference
def test_int8_decoder_stays_close_to_fp32() -> None:
    embeds, = session("embed_tokens").run(None, {"input_ids": np.array([[1, 4, 5, 6, 7, 8]], dtype=np.int64)})
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, 6), np.int64),
             "position_ids": np.arange(6)[None], **empty_past()}
    fp32 = session("decoder_model_merged").run(None, feeds)[0][0]
    int8 = session("decoder_model_merged_int8").run(None, feeds)[0][0]
    cosine = (fp32 * int8).sum(-1) / (np.linalg.norm(fp32, axis=-1) * np.linalg.norm(int8, axis=-1))
    assert cosine.min() > 0.95


def test_vision_attention_without_padding_takes_the_unmasked_branch_with_the_same_result() -> None:
    """The vision graph runs attention without the mask when no patch is padding (an If on
    "all real"): a full tile alone gives the features it gets beside a padded image. In fp32:
    the int8 graph's per-tensor activation scales differ with the batch anyway, which is one
    reason the engine sends the vision graph one tile per call."""
    import onnx

    graph = "vision_encoder"

    model = onnx.load(str(TINY / "onnx" / f"{graph}.onnx"))
    assert sum(n.op_type == "If" for n in model.graph.node) == sum(
        1 for n in model.graph.node if n.op_type == "If" and n.name.endswith("if_all_real")) > 0
    rng = np.random.default_rng(8)
    tile = 64
    pixels = rng.uniform(-1, 1, (1, 2, 3, tile, tile)).astype(np.float32)
    mask = np.ones((1, 2, tile, tile), dtype=bool)
    mask[0, 1, tile // 2:, :] = False
    pixels[0, 1][:, tile // 2:, :] = 0
    vision = session(graph)
    beside = vision.run(None, {"pixel_values": pixels, "pixel_attention_mask": mask})[0]
    alone = vision.run(None, {"pixel_values": pixels[:, :1], "pixel_attention_mask": mask[:, :1]})[0]
    np.testing.assert_allclose(alone[0], beside[0], rtol=1e-5, atol=1e-5)


def test_a_row_of_the_int8_decoder_does_not_depend_on_its_batch() -> None:
    """The int8 decoder quantises each row on its own (MatMulNBits), so one conversation's
    logits are the same decoded alone or beside others; with per-tensor dynamic quantisation
    they were not (a batch-mate's range changed this row's scale)."""
    rng = np.random.default_rng(5)
    layout = session("decoder_model_merged_int8").get_inputs()[3].shape  # [batch, kv, past, dim]
    past_len = 7
    scales = np.array([0.1, 1.0, 30.0], np.float32)[:, None, None]  # rows of very different range
    feeds = {"inputs_embeds": rng.standard_normal((3, 1, 8)).astype(np.float32) * scales,
             "attention_mask": np.ones((3, past_len + 1), np.int64),
             "position_ids": np.full((3, 1), past_len, np.int64)}
    for name in empty_past():
        feeds[name] = rng.standard_normal((3, layout[1], past_len, layout[3])).astype(np.float32)
    decoder = session("decoder_model_merged_int8")
    together = decoder.run(["logits"], feeds)[0]
    for row in range(3):
        alone = decoder.run(["logits"], {k: v[row:row + 1] for k, v in feeds.items()})[0]
        np.testing.assert_allclose(together[row], alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("sizes", "block"), [
    ((576, 1536, 9, 64), 64),     # SmolVLM-256M (SmolLM2-135M): 576 = 4.5 x 128
    ((960, 2560, 15, 64), 64),    # SmolVLM-500M (SmolLM2-360M)
    ((2048, 8192, 32, 64), 128),  # SmolVLM-2.2B
    ((8, 32, 2, 8), 16),          # the tiny demo model: smaller than every block
])
def test_decoder_weight_block_divides_every_matrix(sizes: tuple[int, int, int, int], block: int) -> None:
    from types import SimpleNamespace

    hidden, inter, heads, head_dim = sizes
    config = SimpleNamespace(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, head_dim=head_dim)
    assert export.decoder_weight_block(config) == block


@pytest.mark.reference
def test_verification_catches_a_wrong_graph(torch_model, tmp_path: Path) -> None:
    """verify_export must fail loudly when the graph and the model disagree: check the
    committed graphs against a copy of the model with one weight changed."""
    import copy

    import torch

    changed = copy.deepcopy(torch_model)
    with torch.no_grad():
        changed.model.text_model.layers[0].mlp.down_proj.weight.mul_(1.5)
    assert export.verify_embed(torch_model, session("embed_tokens")) == 0.0
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export.verify_decoder(changed, session("decoder_model_merged"))


# --- full exports (slow) ---------------------------------------------------------------------------
def sha256_tree(folder: Path) -> dict[str, str]:
    """Each file's digest; JSON files without the `transformers_version` stamp.

    transformers writes its own version into config.json and generation_config.json, so a
    new transformers release changes those bytes and nothing else; the graphs, weights and
    tokenizer must still be bit-identical.
    """
    def digest(path: Path) -> str:
        data = path.read_bytes()
        if path.suffix == ".json":
            parsed = json.loads(data)
            if isinstance(parsed, dict):
                parsed.pop("transformers_version", None)
            data = json.dumps(parsed, sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()

    return {p.relative_to(folder).as_posix(): digest(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.reference
def test_build_is_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_tiny_model
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert build_tiny_model.main(["--out", str(tmp_path / "tiny")]) == 0
    assert sha256_tree(tmp_path / "tiny") == sha256_tree(TINY)


@pytest.mark.slow
@pytest.mark.reference
def test_smolvlm_checkpoints_export_to_the_same_graphs(tmp_path: Path) -> None:
    """model_type smolvlm (SmolVLM2's class) with the same seed exports to graphs that
    compute exactly what the committed idefics3 ones do."""
    pytest.importorskip("torch")
    from smolvlm_desktop.export.tiny import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint(tmp_path / "ckpt", model_type="smolvlm")
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "smolvlm"
    export.export_checkpoint(checkpoint, tmp_path / "out", quantize=("uint8",))
    assert (tmp_path / "out" / "onnx" / "decoder_model_merged_uint8.onnx").is_file()
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (TINY / "tokenizer.json").read_bytes()
    ours = ort.InferenceSession(str(tmp_path / "out" / "onnx" / "decoder_model_merged.onnx"),
                                providers=["CPUExecutionProvider"])
    feeds = {"inputs_embeds": np.ones((1, 3, HIDDEN), np.float32), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.arange(3)[None], **empty_past()}
    np.testing.assert_array_equal(ours.run(None, feeds)[0], session("decoder_model_merged").run(None, feeds)[0])
