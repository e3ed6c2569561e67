"""The benchmark's machinery on the bundled tiny model: every stage, ratios, JSON, CLI entry.

No timing is asserted: the numbers of a 2-layer model on a shared machine mean nothing. What
is checked is that each configuration is measured in its own process, that every stage and
ratio ends up in the table and the JSON, and that bad options are usage errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a source-tree folder, not part of the installed package
    sys.path.insert(0, str(REPO))

from bench import kernels  # noqa: E402
from bench import run as bench_run  # noqa: E402
from bench.arch import BUNDLED_TINY, smolvlm_256m, tiny  # noqa: E402
from bench.child import CONFIGS  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")

PHOTO_STAGES = [f"{photo}_{stage}" for photo in ("photo13", "photo17")
                for stage in ("read_per_tile", "prefill", "first_token", "end_to_end")]
STAGES = ["vision_1", "vision_5", "prefill", "decode_per_token", "end_to_end",
          "single_captions_per_image", "batch_per_image", *PHOTO_STAGES, "photo13_singles_per_hour",
          "photo13_batch_per_hour", "conversation_cold", "conversation_read_ahead",
          "conversation_follow_up", "conversation_regenerate", "conversation_follow_up_uncached",
          "cold_first_token", "peak_rss_caption", "peak_rss_run"]
ONNX_ONLY = {"single_captions_per_image", "batch_per_image",  # the app's batch: no transformers twin
             "conversation_read_ahead", "conversation_follow_up", "conversation_regenerate",
             "conversation_follow_up_uncached"}  # kept conversations: the engine's own
NEW_TOKENS = 4
PHOTO_TOKENS = 5
QUICK_PHOTO_BATCH = 2  # photos in the batch of photos under --quick


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One quick run of all three configurations through the CLI entry point; its JSON."""
    from smolvlm_desktop.cli import main

    out = tmp_path_factory.mktemp("bench") / "results.json"
    status = main(["bench", "--arch", "tiny", "--quick", "--repeats", "1", "--threads", "1",
                   "--cache", str(tmp_path_factory.mktemp("bench-cache")),
                   "--new-tokens", str(NEW_TOKENS), "--photo-tokens", str(PHOTO_TOKENS), "--json", str(out)])
    assert status == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_every_stage_is_measured_for_every_configuration(tiny_report: dict) -> None:
    assert list(tiny_report["results"]) == list(CONFIGS)
    assert [row["key"] for row in tiny_report["table"]] == STAGES
    for row in tiny_report["table"]:
        for config in CONFIGS:
            value = row["values"][config]
            if config == "torch" and row["key"] in ONNX_ONLY:
                assert value is None
            else:
                assert value is not None and value > 0, (row["key"], config)


def test_ratios_are_relative_to_transformers(tiny_report: dict) -> None:
    for row in tiny_report["table"]:
        assert set(row["ratio_vs_torch"]) == {"int8", "fp32"}
        for config, ratio in row["ratio_vs_torch"].items():
            if row["key"] in ONNX_ONLY:
                assert ratio is None
            else:
                assert ratio == pytest.approx(row["values"][config] / row["values"]["torch"])


def test_the_batch_rate_is_single_time_over_batch_time(tiny_report: dict,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    values = {row["key"]: row["values"] for row in tiny_report["table"]}
    rates = bench_run.batch_rates(tiny_report["table"])
    assert [r["config"] for r in rates] == ["int8 ONNX", "fp32 ONNX"]
    for rate, config in zip(rates, ("int8", "fp32")):
        expected = values["single_captions_per_image"][config] / values["batch_per_image"][config]
        assert rate["ratio"] == pytest.approx(expected)
    bench_run.print_report(tiny_report)
    assert "batch rate, int8 ONNX:" in capsys.readouterr().out
    assert all(r["info"]["batch_images"] == 8 for c, r in tiny_report["results"].items() if c != "torch")


def test_the_runs_did_the_work_they_claim(tiny_report: dict) -> None:
    for config, result in tiny_report["results"].items():
        assert result["info"]["new_tokens"] == NEW_TOKENS, config
        assert result["info"]["tiles_1"] == 1 and result["info"]["tiles_5"] == 5, config
        cold = result["cold"]
        assert 0 < cold["python_started_s"] <= cold["loaded_s"] <= cold["first_token_s"], config
    prompt_lengths = {r["info"]["prompt_tokens"] for r in tiny_report["results"].values()}
    assert len(prompt_lengths) == 1, "the engine and transformers must see the same prompt"


def test_every_timed_caption_reads_its_image(tiny_report: dict) -> None:
    """The engine keeps an image's features by its pixels, and the bench captions the same
    pixels again and again: each timed caption, single or batch, must read its tiles as a new
    photo does (it did not: the 512-px end to end and batch rows left out the vision pass)."""
    for config, result in tiny_report["results"].items():
        if config == "torch":
            continue
        info = result["info"]
        assert info["end_to_end_tiles_read"] == [1], config  # --repeats 1
        assert info["single_captions_tiles_read"] == [8] and info["batch_tiles_read"] == [8], config
        assert info["photo_batch_tiles_read"] == [13 * QUICK_PHOTO_BATCH], config
        for photo, tiles in (("photo13", 13), ("photo17", 17)):
            assert info[f"{photo}_tiles_read"] == [tiles], (config, photo)


def test_the_photo_rows_are_13_and_17_tiles_at_the_models_own_detail(tiny_report: dict) -> None:
    results = tiny_report["results"]
    for config, result in results.items():
        info = result["info"]
        assert (info["photo13_tiles"], info["photo17_tiles"]) == (13, 17), config
        assert info["photo_size"] == {"photo13": [256, 192], "photo17": [256, 256]}, config  # 4x3, 4x4 tiles of 64
        assert info["photo_new_tokens"] == PHOTO_TOKENS, config
    for photo in ("photo13", "photo17"):
        lengths = {r["info"][f"{photo}_prompt_tokens"] for r in results.values()}
        assert len(lengths) == 1, f"the engine and transformers must see the same {photo} prompt"
    tokens = {p: results["int8"]["info"][f"{p}_prompt_tokens"] for p in ("photo13", "photo17")}
    assert tokens["photo13"] > 13 * 16 and tokens["photo17"] > 17 * 16  # 16 image tokens a tile, and the text
    assert 4 * 16 < tokens["photo17"] - tokens["photo13"] < 4 * 20  # 4 more tiles and their row/column markers
    assert all(r["info"]["photo_batch_images"] == QUICK_PHOTO_BATCH for c, r in results.items() if c != "torch")


def test_images_per_hour_follow_from_the_times(tiny_report: dict) -> None:
    rows = {row["key"]: row["values"] for row in tiny_report["table"]}
    for config in CONFIGS:
        assert rows["photo13_singles_per_hour"][config] == pytest.approx(
            3600 / rows["photo13_end_to_end"][config])  # seconds
    assert rows["photo13_batch_per_hour"]["torch"] == rows["photo13_singles_per_hour"]["torch"]  # one at a time
    for config in ("int8", "fp32"):
        samples = tiny_report["results"][config]["stages_ms"]["photo_batch_per_image"]
        assert rows["photo13_batch_per_hour"][config] == pytest.approx(3_600_000 / samples[0])


def test_the_cpu_and_its_gemm_rates_come_first(tiny_report: dict, capsys: pytest.CaptureFixture[str]) -> None:
    kernels = tiny_report["kernels"]
    assert kernels["cpu"]["model"] and kernels["cpu"]["source"]
    gemm = kernels["gemm"]
    assert gemm["shape"] == [878, 576, 1536]  # the 256M prompt's shape, whatever the arch measured
    assert set(gemm["gops"]) == {"int8", "int8_blocks", "fp32"} and all(v > 0 for v in gemm["gops"].values())
    assert gemm["int8_gops"] == gemm["gops"]["int8"] and gemm["threads"] == 1
    bench_run.print_report(tiny_report)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("SmolVLM tiny") and lines[2].startswith("CPU: ") and lines[3].startswith("GEMM 878x576x1536")


def test_each_stage_is_given_as_a_share_of_the_int8_rate(tiny_report: dict,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rows = {row["key"]: row for row in tiny_report["table"]}
    shares = tiny_report["shares"]
    assert [s["key"] for s in shares] == ["vision_1", "photo13_read_per_tile", "photo17_read_per_tile",
                                          "prefill", "photo13_prefill", "photo17_prefill"]
    info = tiny_report["results"]["int8"]["info"]
    prompt_ops, tile_ops = kernels.model_ops(tiny().config)
    expected_ops = {"vision_1": tile_ops, "photo13_read_per_tile": tile_ops, "photo17_read_per_tile": tile_ops,
                    "prefill": prompt_ops(info["prompt_tokens"]),
                    "photo13_prefill": prompt_ops(info["photo13_prompt_tokens"]),
                    "photo17_prefill": prompt_ops(info["photo17_prompt_tokens"])}
    for share in shares:
        assert share["gop"] == pytest.approx(expected_ops[share["key"]] / 1e9)
        for config in CONFIGS:
            ms = rows[share["key"]]["values"][config]
            assert share["gops"][config] == pytest.approx(share["gop"] / (ms / 1000))
            measured = tiny_report["results"][config]["info"]["gemm_int8_gops"]
            assert len(measured) == 2 and all(g > 0 for g in measured)  # in its own process: before, after
            assert share["share_of_int8"][config] == pytest.approx(share["gops"][config] / np.mean(measured))
    bench_run.print_report(tiny_report)
    out = capsys.readouterr().out
    assert "share of the int8 GEMM rate" in out and all(s["label"] in out for s in shares)


def test_the_json_names_the_reference_and_the_conditions(tiny_report: dict) -> None:
    assert tiny_report["llama_cpp_reference"]["note"] == "measured elsewhere, not in this run"
    assert tiny_report["threads"] == 1 and tiny_report["repeats"] == 1 and tiny_report["arch"] == "tiny"
    assert tiny_report["machine"]["load_before"] and tiny_report["machine"]["load_after"]
    assert Path(tiny_report["model_dir"]) == BUNDLED_TINY


def test_table_prints_one_row_per_stage_and_the_reference_line(
        tiny_report: dict, capsys: pytest.CaptureFixture[str]) -> None:
    bench_run.print_report(tiny_report)
    out = capsys.readouterr().out
    for row in tiny_report["table"]:
        assert row["label"] in out
    assert "int8/torch" in out and "fp32/torch" in out
    assert "llama.cpp" in out and "not in this run" in out


def test_only_without_torch_has_no_ratio_columns() -> None:
    rows = [{"label": "decode", "unit": "ms", "values": {"int8": 1.0}, "ratio_vs_torch": {"int8": None}}]
    table = bench_run.format_table(rows, ["int8"])
    assert "int8 ONNX" in table and "/torch" not in table


def test_no_photos_skips_the_photo_rows_in_every_child() -> None:
    args = bench_run.parse_args(["--arch", "tiny", "--no-photos"])
    assert not args.photos
    assert "--no-photos" in bench_run.child_command("int8", tiny(), bench_run.ensure_model(tiny()), args)
    quick = bench_run.parse_args(["--quick"])
    assert (quick.repeats, quick.photo_repeats, quick.photo_batch) == (2, 1, QUICK_PHOTO_BATCH)
    full = bench_run.parse_args([])
    assert full.photos and (full.repeats, full.photo_repeats, full.photo_batch, full.photo_tokens) == (5, 2, 4, 48)


def test_the_operation_counts_match_the_graphs_weights() -> None:
    """The formulas' matrix sizes are those of the exported graphs: the weights of every
    MatMul (and the patch convolution) in the tiny model's fp32 files, counted one by one."""
    import onnx
    from onnx import numpy_helper

    def matmul_weights(path: Path) -> list[tuple[int, ...]]:
        model = onnx.load(str(path))
        shapes = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
        return [shapes[n.input[1]] for n in model.graph.node
                if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in shapes]

    config = tiny().config
    text, vision = config["text_config"], config["vision_config"]
    tokens = 10
    head = text["hidden_size"] * text["vocab_size"]  # the LM head: for the last position only
    layers = sum(int(np.prod(shape)) for shape in matmul_weights(BUNDLED_TINY / "onnx" / "decoder_model_merged.onnx")) - head
    attention = 2 * text["num_hidden_layers"] * text["num_attention_heads"] * text["head_dim"] * tokens * (tokens + 1)
    assert kernels.decoder_prompt_ops(text, tokens) == 2 * tokens * layers + attention + 2 * head

    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    shuffled = vision["hidden_size"] * config["scale_factor"] ** 2  # the connector's input width
    encoder = matmul_weights(BUNDLED_TINY / "onnx" / "vision_encoder.onnx")
    assert sum(1 for shape in encoder if shape[0] == shuffled) == 1
    linear = sum(2 * (patches // config["scale_factor"] ** 2 if shape[0] == shuffled else patches) * int(np.prod(shape))
                 for shape in encoder)
    full_attention = 4 * vision["num_hidden_layers"] * patches**2 * vision["hidden_size"]
    assert kernels.vision_tile_ops(vision, text["hidden_size"]) == linear + full_attention


def test_the_256m_counts_are_the_documented_ones() -> None:
    prompt_ops, tile_ops = kernels.model_ops(smolvlm_256m().config)
    assert prompt_ops(878) / 1e9 == pytest.approx(213.2, abs=0.1)
    assert tile_ops / 1e9 == pytest.approx(214.7, abs=0.1)


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 avx512bw
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd asimddp i8mm bf16
CPU implementer\t: 0x41
"""


def test_cpu_features_are_read_from_cpuinfo() -> None:
    x86 = kernels.parse_cpuinfo(X86_CPUINFO)
    assert x86["model"] == "AMD EPYC" and x86["detail"] == "cpu family 25, model 17"
    assert x86["features"]["avx512_vnni"] and x86["features"]["avx512_bf16"] and not x86["features"]["amx_int8"]
    assert kernels.describe_cpu(x86).startswith("AMD EPYC (cpu family 25, model 17); has avx2 avx512f avx512_vnni "
                                                "avx512_bf16; lacks avx512_fp16")
    arm = kernels.parse_cpuinfo(ARM_CPUINFO)
    assert set(arm["features"]) == set(kernels.ARM_FEATURES) and arm["features"]["i8mm"] and not arm["features"]["sve"]
    assert kernels.parse_cpuinfo("") is None
    here = kernels.cpu_info()  # this machine, whatever it is: a name, and a source that says where from
    assert here["model"] and here["source"] and isinstance(here["features"], dict)


@pytest.mark.parametrize("argv", [["--only", "int8,gpu"], ["--only", ""], ["--repeats", "0"],
                                  ["--arch", "7b"], ["--photo-repeats", "0"], ["--photo-tokens", "1"]])
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    assert bench_run.main(argv) == 2


def test_the_256m_architecture_is_the_real_one() -> None:
    arch = smolvlm_256m()
    text, vision = arch.config["text_config"], arch.config["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"],
            text["num_key_value_heads"], text["head_dim"], text["intermediate_size"],
            text["vocab_size"]) == (576, 30, 9, 3, 64, 1536, 49280)
    assert text["rope_parameters"]["rope_theta"] == 100000.0 and arch.config["tie_word_embeddings"]
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"],
            vision["intermediate_size"], vision["image_size"], vision["patch_size"]) == (768, 12, 12, 3072, 512, 16)
    assert (arch.config["scale_factor"], arch.image_seq_len, arch.tile, arch.longest_edge) == (4, 64, 512, 2048)
    assert arch.key != tiny().key and arch.key == smolvlm_256m().key
