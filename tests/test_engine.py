"""Engine behaviour on the real tiny ONNX model: stopping, limits, cancelling, sampling, errors."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smolvlm_desktop.engine import runtime
from smolvlm_desktop.engine.model import VisionLanguageModel
from smolvlm_desktop.engine.types import (
    CancelToken,
    EngineError,
    GenerationResult,
    GenerationSettings,
    Message,
    ModelFolderError,
)


def photo(seed: int = 0, size: tuple[int, int] = (150, 100)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def ask(text: str = "Describe this image.", seed: int = 0) -> list[Message]:
    return [Message("user", text, images=(photo(seed),))]


def test_max_new_tokens_is_respected(tiny_model: VisionLanguageModel) -> None:
    result = tiny_model.generate(ask(), GenerationSettings(max_new_tokens=5))
    if result.stop_reason == "stop_token":
        pytest.fail("the tiny model stopped on its own before 5 tokens; pick another prompt")
    assert result.stop_reason == "max_tokens"
    assert len(result.token_ids) == 5
    assert result.timings.new_tokens == 5


def test_generation_stops_at_a_stop_id_and_leaves_it_out(tiny_model: VisionLanguageModel) -> None:
    free = tiny_model.generate(ask(), GenerationSettings(max_new_tokens=12)).token_ids
    stop_at = free[4]
    first = free.index(stop_at)
    result = tiny_model.generate(ask(), GenerationSettings(max_new_tokens=12,
                                                           extra_stop_ids=(stop_at,)))
    assert result.stop_reason == "stop_token"
    assert result.token_ids == free[:first]


def test_streamed_text_is_the_result_text(tiny_model: VisionLanguageModel) -> None:
    gen = tiny_model.stream(ask(), GenerationSettings(max_new_tokens=16))
    streamed = "".join(event.text for event in gen)
    assert gen.result is not None
    assert streamed == gen.result.text
    assert gen.result.text == tiny_model.prompt.decode(gen.result.token_ids)
    timings = gen.result.timings
    assert timings.image_ms > 0 and timings.prefill_ms > 0 and timings.prompt_tokens > 16


def test_cancel_mid_generation_stops_at_once(tiny_model: VisionLanguageModel) -> None:
    cancel = CancelToken()
    gen = tiny_model.stream(ask(), GenerationSettings(max_new_tokens=50), cancel=cancel)
    seen = 0
    for _ in gen:
        seen += 1
        if seen == 3:
            cancel.cancel()
    assert gen.result is not None and gen.result.stop_reason == "cancelled"
    assert len(gen.result.token_ids) == 3


def test_cancel_before_the_vision_pass_terminates_onnxruntime(tiny_model: VisionLanguageModel) -> None:
    """RunOptions.terminate is set by the token, so even the first ORT run refuses to start."""
    cancel = CancelToken()
    cancel.cancel()
    result = tiny_model.generate(ask(), GenerationSettings(max_new_tokens=50), cancel=cancel)
    assert result.stop_reason == "cancelled"
    assert result.token_ids == []


def test_cancel_from_another_thread(tiny_model: VisionLanguageModel) -> None:
    cancel = CancelToken()
    started = threading.Event()
    gen = tiny_model.stream(ask(), GenerationSettings(max_new_tokens=2000,
                                                      extra_stop_ids=()), cancel=cancel)

    def consume() -> None:
        for _ in gen:
            started.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(30)
    cancel.cancel()
    worker.join(30)
    assert not worker.is_alive()
    assert gen.result is not None and gen.result.stop_reason in ("cancelled", "stop_token")


def test_sampling_is_reproducible_with_a_seed(tiny_model: VisionLanguageModel) -> None:
    settings = GenerationSettings(max_new_tokens=12, temperature=1.2, top_p=0.95, top_k=50, seed=7)
    a = tiny_model.generate(ask(), settings).token_ids
    b = tiny_model.generate(ask(), settings).token_ids
    other = tiny_model.generate(ask(), GenerationSettings(
        max_new_tokens=12, temperature=1.2, top_p=0.95, top_k=50, seed=8)).token_ids
    greedy = tiny_model.generate(ask(), GenerationSettings(max_new_tokens=12)).token_ids
    assert a == b
    assert a != other or a != greedy


def test_repetition_penalty_changes_greedy_choice(tiny_model: VisionLanguageModel) -> None:
    plain = tiny_model.generate(ask(), GenerationSettings(max_new_tokens=20)).token_ids
    penalised = tiny_model.generate(ask(), GenerationSettings(
        max_new_tokens=20, repetition_penalty=5.0)).token_ids
    assert plain != penalised


def test_text_only_turn_needs_no_image(tiny_model: VisionLanguageModel) -> None:
    result = tiny_model.generate([Message("user", "Hello there")], GenerationSettings(max_new_tokens=4))
    assert result.timings.image_ms < 1000
    assert result.stop_reason in ("max_tokens", "stop_token")


def test_model_info_reports_real_providers(tiny_model: VisionLanguageModel) -> None:
    info = tiny_model.info
    assert info.variant == "fp32"
    assert set(info.providers) == {"vision_encoder", "embed_tokens", "decoder_model_merged"}
    assert set(info.providers.values()) == {"cpu"}
    assert info.tile_size == 64 and info.image_seq_len == 16


def test_int8_is_the_default_variant_on_cpu(tiny_model_dir: Path) -> None:
    model = VisionLanguageModel.load(tiny_model_dir, provider="cpu", threads=1)
    assert model.info.variant == "int8"
    assert model.generate(ask(), GenerationSettings(max_new_tokens=3)).token_ids


def test_unavailable_gpu_provider_falls_back_to_cpu_visibly_mocked_dml(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DirectML device exists here: pretend the build offers it; ORT cannot place the graph
    on it, so the graph must run on the CPU and say why."""
    monkeypatch.setattr(runtime, "available_providers", lambda: ["dml", "cpu"])
    graph = runtime.open_graph("embed_tokens", tiny_model_dir / "onnx" / "embed_tokens.onnx", "dml", 1)
    assert graph.provider == "cpu"
    assert graph.fallback_reason and "dml" in graph.fallback_reason


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(runtime.ProviderError, match="unknown provider 'tpu'"):
        runtime.provider_order("tpu")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_misnamed_graph_names_the_file_and_the_inputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    shutil.copy(folder / "onnx" / "embed_tokens.onnx", folder / "onnx" / "vision_encoder.onnx")
    with pytest.raises(ModelFolderError, match=r"vision_encoder\.onnx.*expected inputs pixel_values"):
        VisionLanguageModel.load(folder, variant="fp32", provider="cpu")


def test_damaged_graph_says_to_verify(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    (folder / "onnx" / "decoder_model_merged.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelFolderError, match="verify"):
        VisionLanguageModel.load(folder, variant="fp32", provider="cpu")


def test_missing_variant_is_a_clear_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelFolderError, match="q4"):
        VisionLanguageModel.load(tiny_model_dir, variant="q4", provider="cpu")


def test_unloaded_model_refuses_politely(tiny_model_dir: Path) -> None:
    model = VisionLanguageModel.load(tiny_model_dir, variant="fp32", provider="cpu", threads=1)
    model.close()
    with pytest.raises(EngineError, match="unloaded"):
        model.stream(ask())


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


# --- several conversations at once (generate_many) --------------------------------------------
def conversations() -> list[list[Message]]:
    return [ask("Describe this image.", 0), ask("What is in it?", 1), ask("Tags?", 2),
            [Message("user", "Say something.")]]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_decoding_together_gives_each_conversation_its_own_answer(tiny_model_dir: Path, variant: str) -> None:
    """Rows of different prompt lengths, one of them ending early at a stop id (so the batch
    shrinks mid-way): every answer, token for token, as generate() gives it alone."""
    model = VisionLanguageModel.load(tiny_model_dir, variant=variant, provider="cpu", threads=1)
    assert model.decodes_in_batches
    base = GenerationSettings(max_new_tokens=12)
    first = [model.generate(c, base) for c in conversations()]
    for early in first[1].token_ids[1:]:  # a token that ends some answers sooner than others
        settings = GenerationSettings(max_new_tokens=12, extra_stop_ids=(early,))
        alone = [model.generate(c, settings) for c in conversations()]
        if len({len(a.token_ids) for a in alone}) > 1:
            break
    assert len({len(a.token_ids) for a in alone}) > 1, "no rows of different lengths to test with"
    streamed: dict[int, str] = {}
    together = model.generate_many(conversations(), settings,
                                   on_token=lambda i, e: streamed.__setitem__(i, streamed.get(i, "") + e.text))
    for one, many, index in zip(alone, together, range(4)):
        assert isinstance(many, GenerationResult)
        assert (many.token_ids, many.text, many.stop_reason) == (one.token_ids, one.text, one.stop_reason)
        assert streamed.get(index, "") == many.text
        assert many.timings.prompt_tokens == one.timings.prompt_tokens
        assert (many.timings.decode_ms > 0) == (len(many.token_ids) > 1)  # its share of the steps it was in


def test_a_decoder_whose_rows_depend_on_the_batch_answers_one_by_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The official int8 files' per-tensor dynamic quantisation: rows are not decoded
    together there (a caption must not depend on the images beside it); answers still match."""
    pytest.importorskip("onnx")
    from smolvlm_desktop.export import quantize_graph

    folder = copy_model(tiny_model_dir, tmp_path / "model")
    onnx_dir = folder / "onnx"
    quantize_graph(onnx_dir / "decoder_model_merged.onnx", onnx_dir / "decoder_model_merged_int8.onnx", "int8")
    model = VisionLanguageModel.load(folder, variant="int8", provider="cpu", threads=1)
    assert not model.decodes_in_batches
    settings = GenerationSettings(max_new_tokens=6)
    together = model.generate_many(conversations(), settings)
    assert [r.token_ids for r in together] == [model.generate(c, settings).token_ids for c in conversations()]


def test_a_cancel_stops_every_conversation_of_the_batch(tiny_model: VisionLanguageModel) -> None:
    cancel = CancelToken()
    results = tiny_model.generate_many(conversations(), GenerationSettings(max_new_tokens=50), cancel=cancel,
                                       on_token=lambda i, e: cancel.cancel())
    assert [r.stop_reason for r in results] == ["cancelled"] * 4
    assert all(len(r.token_ids) <= 1 for r in results)


def test_a_prompt_longer_than_the_model_reads_is_that_conversation_s_error_only(
        tiny_model: VisionLanguageModel) -> None:
    """At 2048 px the tiny model's 64-px tiles make 1,025 tiles, 16,400 image tokens: past its
    8,192 positions. Said before the vision pass, for that conversation only."""
    bad = [Message("user", "Describe.", images=(photo(3),))]
    text_only = [Message("user", "Say something.")]
    results = tiny_model.generate_many([text_only, bad], GenerationSettings(max_new_tokens=4, detail=2048))
    assert isinstance(results[0], GenerationResult) and len(results[0].token_ids) == 4
    assert isinstance(results[1], EngineError)
    assert "8192" in str(results[1]) and "detail" in str(results[1])
    with pytest.raises(EngineError, match="at most 8192"):
        tiny_model.generate(bad, GenerationSettings(max_new_tokens=4, detail=2048))


@pytest.mark.parametrize("state_class", ["DecoderState", "InPlaceDecoderState"])
def test_batch_decoder_rows_match_each_conversation_alone(tiny_model: VisionLanguageModel, state_class: str) -> None:
    """The left padding and masks of BatchDecoder, at the logits: three caches of different
    lengths decoded together, then two of them after the third has finished. Built from
    either kind of cache (the in-place one lends views of its buffers)."""
    from smolvlm_desktop.engine import generate
    from smolvlm_desktop.engine.generate import BatchDecoder

    decoder, layout = tiny_model.graphs["decoder_model_merged"], tiny_model.cache_layout
    rng = np.random.default_rng(4)
    hidden = decoder.session.get_inputs()[0].shape[-1]
    states = []
    for length in (3, 9, 5):
        state = getattr(generate, state_class)(decoder, layout)
        state.forward(rng.standard_normal((1, length, hidden)).astype(np.float32))
        states.append(state)
    batch = BatchDecoder(states)
    for rows in ([0, 1, 2], [0, 2]):
        if len(rows) < 3:
            batch.keep([0, 2])
        step = rng.standard_normal((len(rows), 1, hidden)).astype(np.float32)
        together = batch.forward(step)
        for k, row in enumerate(rows):
            np.testing.assert_allclose(together[k], states[row].forward(step[k:k + 1]), rtol=1e-5, atol=1e-5)


def test_a_cancel_from_another_thread_during_a_batched_step_cancels_cleanly(tiny_model: VisionLanguageModel) -> None:
    """The cancel token terminates ONNX Runtime mid-call (RunOptions.terminate): every answer
    ends as cancelled, no exception escapes."""
    cancel = CancelToken()
    steps = []

    def on_token(index: int, event: object) -> None:
        steps.append(index)
        if len(steps) == 6:  # a few steps in, from another thread, as the Stop button does
            threading.Thread(target=cancel.cancel).start()
            time.sleep(0.05)

    results = tiny_model.generate_many(conversations(), GenerationSettings(max_new_tokens=200), cancel=cancel,
                                       on_token=on_token)
    assert all(isinstance(r, GenerationResult) and r.stop_reason == "cancelled" for r in results)


def test_the_exported_decoder_writes_its_cache_in_place_with_the_same_logits(tiny_model_dir: Path) -> None:
    """InPlaceDecoderState against the copying DecoderState, bit for bit: a prompt, enough
    steps to outgrow the buffers twice, a follow-up of three tokens, more steps."""
    from smolvlm_desktop.engine.generate import DecoderState, InPlaceDecoderState

    for variant in ("int8", "fp32"):
        model = VisionLanguageModel.load(tiny_model_dir, variant=variant, provider="cpu", threads=1)
        assert isinstance(model.new_decoder_state(), InPlaceDecoderState)
        decoder, layout = model.graphs["decoder_model_merged"], model.cache_layout
        copying, in_place = DecoderState(decoder, layout), InPlaceDecoderState(decoder, layout, capacity=4)
        rng = np.random.default_rng(9)
        for length in [5] + [1] * 140 + [3] + [1] * 3:
            embeds = rng.standard_normal((1, length, 8)).astype(np.float32)
            assert np.array_equal(copying.forward(embeds), in_place.forward(embeds))
        assert in_place.length == copying.length == 151 and in_place.capacity > 132
        for name, value in copying.past.items():
            assert np.array_equal(in_place.past[name], value), name


def test_a_decoder_that_concatenates_its_cache_keeps_copying_it(tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    """A decoder that appends to its cache with Concat (as traced and official graphs do)
    cannot write into bound buffers: the probe says no, quietly, and the copying cache is used."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import onnxruntime as ort
    from smolvlm_desktop.engine.generate import CacheLayout, updates_cache_in_place

    def tensor(name: str, shape: list) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    past = [f"past_key_values.0.{k}" for k in ("key", "value")]
    nodes = [helper.make_node("Unsqueeze", ["inputs_embeds", "axis1"], ["new"]),
             *[helper.make_node("Concat", [p, "new"], ["present.0." + p.rsplit(".", 1)[1]], axis=2) for p in past],
             helper.make_node("MatMul", ["inputs_embeds", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "concat_cache",
        [tensor("inputs_embeds", ["b", "s", 8]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"]),
         *[tensor(p, ["b", 1, "p", 8]) for p in past]],
        [tensor("logits", ["b", "s", 16]), *[tensor("present.0." + k, ["b", 1, "t", 8]) for k in ("key", "value")]],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("head", TensorProto.FLOAT, [8, 16], np.ones(128).tolist())])
    path = tmp_path / "decoder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    decoder = runtime.GraphSession("decoder_model_merged", path, session, "cpu",
                                   output_names=tuple(o.name for o in session.get_outputs()))
    assert not updates_cache_in_place(decoder, CacheLayout(1, 1, 8, "float32"), hidden=8)
    assert "INVALID_ARGUMENT" not in capfd.readouterr().err


def test_a_prompt_asks_the_decoder_for_its_last_logits_only(tiny_model: VisionLanguageModel) -> None:
    """The exporter's decoder takes logits_to_keep (its LM head then skips the other prompt
    positions); the engine sets it for prompts, not for single tokens, where IOBinding
    refuses it. A graph without the input is never sent it."""
    from smolvlm_desktop.engine.generate import DecoderState

    decoder, layout = tiny_model.graphs["decoder_model_merged"], tiny_model.cache_layout
    state = DecoderState(decoder, layout)
    prompt, token = np.zeros((1, 5, 8), np.float32), np.zeros((1, 1, 8), np.float32)
    assert state._feeds(prompt)["logits_to_keep"] == 1
    assert "logits_to_keep" not in state._feeds(token)
    full = decoder.run({**{k: v for k, v in state._feeds(prompt).items() if k != "logits_to_keep"},
                        **state.past}, None, ["logits"])[0]
    assert np.allclose(state.forward(prompt), full[0, -1], atol=1e-5)
    older = dataclasses.replace(decoder, optional_inputs=())
    assert "logits_to_keep" not in DecoderState(older, layout)._feeds(prompt)
