"""bench/fastvlm.py's machinery on the bundled tiny models: every row of the side-by-side table,
the operation count and the bytes a decoding step reads. No timing is asserted (2 shared cores)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a source-tree folder
    sys.path.insert(0, str(REPO))

from bench import fastvlm as bench  # noqa: E402

DATA = REPO / "smolvlm_desktop" / "data"


def test_the_operation_count_is_twice_the_multiply_adds(tmp_path: Path) -> None:
    """A 3x3 conv (8 -> 16 channels, 10x10 out), a 1x1 one and a MatMul by a weight: 2 x MACs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.ones((16, 8, 3, 3), np.float32), "k3"),
               numpy_helper.from_array(np.ones((4, 16, 1, 1), np.float32), "k1"),
               numpy_helper.from_array(np.ones((10, 5), np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "k3"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "k1"], ["b"]),
             helper.make_node("MatMul", ["b", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    macs = 100 * 16 * 8 * 9 + 100 * 4 * 16 + (4 * 10 * 5) * 10  # out elements x in size
    assert bench.vision_gop(tmp_path / "g.onnx", {"x": [1, 8, 10, 10]}) == pytest.approx(2 * macs / 1e9)


def test_a_decoding_step_reads_every_weight_but_the_rope_tables() -> None:
    import onnx

    path = DATA / "tiny-fastvlm" / "onnx" / "decoder_model_merged_int8.onnx"
    model = onnx.load(str(path))
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    rope = [t for t in model.graph.initializer if t.name.startswith(("rope_cos", "rope_sin"))]
    assert len(rope) == 2
    assert bench.decoder_bytes_per_token(path) == total - sum(len(t.raw_data) for t in rope)


@pytest.mark.slow
def test_the_side_by_side_run_on_the_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    folders = f"tiny-fastvlm={DATA / 'tiny-fastvlm'},tiny-smolvlm={DATA / 'tiny-smolvlm'}"
    assert bench.main(["run", "--folders", folders, "--repeats", "1", "--new-tokens", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    fast, smol = report["models"]
    assert (fast["model"], fast["vision_passes"], fast["detail"]) == ("tiny-fastvlm", 1, 256)
    assert smol["vision_passes"] > 1  # tiles at SmolVLM's own detail
    for row in (fast, smol):
        assert row["new_tokens"] == 4 and row["decoder_in_place"]
        assert 0 < row["first_token_ms"] <= row["end_to_end_ms"]
        assert row["vision_gop"] > 0 and row["decoder_int8_mb"] > 0 and row["peak_rss_mb"] > 0
        assert 0 < row["vision_share_of_int8_gemm"] and 0 < row["decode_share_of_bandwidth"]
    assert set(report["rates"]) >= {"int8 DynamicQuantizeMatMul", "fp32 MatMul", "memory read GB/s"}
    printed = capsys.readouterr().out
    for label in ("time to first token", "vision rate / int8 GEMM rate", "decode bytes / bandwidth", "peak RSS"):
        assert label in printed


@pytest.mark.slow
def test_interleaved_rounds_give_a_median_per_model() -> None:
    dirs = {"tiny-fastvlm": DATA / "tiny-fastvlm", "tiny-smolvlm": DATA / "tiny-smolvlm"}
    medians = bench.interleave(dirs, threads=1, repeats=2, new_tokens=3)
    assert list(medians) == list(dirs)
    for m in medians.values():
        assert 0 < m["image_s"] <= m["first_token_s"] <= m["end_to_end_s"] and m["decode_ms_per_token"] > 0
