"""int8 / uint8 variants of the fp32 graphs, with ONNX Runtime's quantisers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .layout import DECODER_GRAPH, GRAPHS, normalise


@contextlib.contextmanager
def _errors_only() -> Iterator[None]:
    """Only errors from the root logger while ONNX Runtime's quantisers run (they advise
    "pre-processing" on every call and log every node they touch), then the caller's level."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(fp32_path: Path, out_path: Path, kind: str) -> None:
    """Dynamic quantisation of the weights (MatMul and Gather) to int8 or uint8."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QInt8 if kind == "int8" else QuantType.QUInt8
    with _errors_only():
        # DefaultTensorType: ONNX's shape inference does not know ONNX Runtime's fused ops (the
        # hand-written decoder's), so it cannot tell their outputs are float; they are.
        quantize_dynamic(fp32_path, out_path, weight_type=weight_type, op_types_to_quantize=["MatMul", "Gather"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    normalise(out_path)


# MatMulNBits block sizes to try for the decoder's int8 file, largest first: the first that
# divides every matrix's input size is used, so no block is padded (SmolVLM-256M's 576 takes
# 64). A dimension smaller than every block (the tiny demo model's 8) takes the smallest.
DECODER_WEIGHT_BLOCKS = (128, 64, 32, 16)


def decoder_weight_block(text_config: Any) -> int:
    """The block size for the decoder's MatMulNBits weights (see DECODER_WEIGHT_BLOCKS)."""
    heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
    inputs = {int(text_config.hidden_size), int(text_config.intermediate_size), heads * head_dim}
    return next((b for b in DECODER_WEIGHT_BLOCKS if all(k % b == 0 for k in inputs)), DECODER_WEIGHT_BLOCKS[-1])


def quantize_decoder_weights(fp32_path: Path, out_path: Path, block: int) -> None:
    """The decoder's int8 variant: 8-bit block-wise weights (MatMulNBits, accuracy level 4:
    the activations are quantised per row and block inside the op), not per-tensor dynamic
    quantisation.

    Why, measured on the random-weight 256M (2 threads, AVX-512 VNNI): the logits stay closer
    to fp32 (cosine 0.9993 vs 0.9968, top-1 agreement 0.95 vs 0.92 over 60 positions), and each
    row of a batch is quantised on its own, so a caption does not depend on the images that
    share its decoding batch (with dynamic quantisation's one scale per tensor, a row's logits
    moved by up to 17 when decoded beside three others; here by 6e-5). Speed is the same
    within noise (7.9 vs 8.1 ms per step, interleaved A/B; block 128, padded, 8.4 ms). The
    vision graph stays dynamic int8, which was faster there (512 vs 745 ms per tile). Needs
    ONNX Runtime 1.23+ (8-bit kernels on x64 came in 1.22, on ARM64 in 1.23)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    with _errors_only():
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), block_size=block, is_symmetric=True,
                                         accuracy_level=4, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out_path), use_external_data_format=False)
    normalise(out_path)


def quantize_variants(onnx_dir: Path, kinds: Sequence[str], text_config: Any,
                      on_step: Callable[[str, int, int], None] | None = None) -> None:
    """Write each fp32 graph's `kinds` variants next to it: the decoder's int8 as MatMulNBits
    (quantize_decoder_weights), everything else with dynamic quantisation."""
    jobs = [(name, kind) for kind in kinds for name in GRAPHS]
    for done, (name, kind) in enumerate(jobs):
        if on_step:
            on_step(f"quantising {name} to {kind}", done, len(jobs))
        source, target = onnx_dir / f"{name}.onnx", onnx_dir / f"{name}_{kind}.onnx"
        if name == DECODER_GRAPH and kind == "int8":
            quantize_decoder_weights(source, target, decoder_weight_block(text_config))
        else:
            quantize_graph(source, target, kind)
