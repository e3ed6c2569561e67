"""The benchmark's machinery on the bundled tiny model: every stage, ratios, JSON, CLI entry.

No timing is asserted: the numbers of a 2-layer model on a shared machine mean nothing. What
is checked is that each configuration is measured in its own process, that every stage and
ratio ends up in the table and the JSON, and that bad options are usage errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a source-tree folder, not part of the installed package
    sys.path.insert(0, str(REPO))

from bench import run as bench_run  # noqa: E402
from bench.arch import BUNDLED_TINY, smolvlm_256m, tiny  # noqa: E402
from bench.child import CONFIGS  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")

STAGES = ["vision_1", "vision_5", "prefill", "decode_per_token", "end_to_end",
          "single_captions_per_image", "batch_per_image", "conversation_cold", "conversation_read_ahead",
          "conversation_follow_up", "conversation_regenerate", "conversation_follow_up_uncached",
          "cold_first_token", "peak_rss_caption", "peak_rss_run"]
ONNX_ONLY = {"single_captions_per_image", "batch_per_image",  # the app's batch: no transformers twin
             "conversation_read_ahead", "conversation_follow_up", "conversation_regenerate",
             "conversation_follow_up_uncached"}  # kept conversations: the engine's own
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One quick run of all three configurations through the CLI entry point; its JSON."""
    from smolvlm_desktop.cli import main

    out = tmp_path_factory.mktemp("bench") / "results.json"
    status = main(["bench", "--arch", "tiny", "--repeats", "1", "--threads", "1",
                   "--cache", str(tmp_path_factory.mktemp("bench-cache")),
                   "--new-tokens", str(NEW_TOKENS), "--json", str(out)])
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


@pytest.mark.parametrize("argv", [["--only", "int8,gpu"], ["--only", ""], ["--repeats", "0"],
                                  ["--arch", "7b"]])
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
