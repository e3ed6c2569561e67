"""The exporter: SmolVLM weights -> this project's ONNX graphs in the official layout.

* ``checkpoint``: a transformers checkpoint (PyTorch) -> the three graphs, each checked
  against the unmodified transformers model (needs the export extra: torch, transformers, onnx);
* ``decoder`` / ``vision``: the graphs ONNX Runtime runs fastest (fused ops);
* ``quantize``: the int8 / uint8 variants;
* ``layout``: graph names, side files, byte-stable ONNX files;
* ``tiny``: the random-weight demo model the tests and the demo mode use.

The names below are the package's public face; the heavy libraries are imported inside
functions, so importing this package costs nothing.
"""

from .checkpoint import (ATOL, RTOL, cache_argument, causal_mask, export_checkpoint, load_checkpoint,
                         quiet_progress_bars, require_export_extra, returned_cache, verify_decoder,
                         verify_embed, verify_export, verify_vision)
from .layout import (DECODER_GRAPH, EMBED_GRAPH, GRAPHS, QUANTIZATIONS, SIDE_FILES, VISION_GRAPH, ExportError,
                     copy_side_files)
from .quantize import DECODER_WEIGHT_BLOCKS, decoder_weight_block, quantize_decoder_weights, quantize_graph

__all__ = [
    "ATOL", "DECODER_GRAPH", "DECODER_WEIGHT_BLOCKS", "EMBED_GRAPH", "GRAPHS", "QUANTIZATIONS", "RTOL",
    "SIDE_FILES", "VISION_GRAPH", "ExportError", "cache_argument", "causal_mask", "copy_side_files",
    "decoder_weight_block", "export_checkpoint", "load_checkpoint", "quantize_decoder_weights", "quantize_graph",
    "quiet_progress_bars", "require_export_extra", "returned_cache", "verify_decoder", "verify_embed",
    "verify_export", "verify_vision",
]
