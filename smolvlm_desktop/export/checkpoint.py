"""Export a SmolVLM PyTorch checkpoint into the official ONNX layout, checked against transformers.

Why this exists: the app only runs ONNX graphs. A checkpoint folder (``save_pretrained`` of
``Idefics3ForConditionalGeneration`` or ``SmolVLMForConditionalGeneration``) becomes the same
three graphs, with the same input and output names, that Hugging Face publishes under ``onnx/``:

* ``vision_encoder.onnx``: pixel_values + pixel_attention_mask -> image_features
* ``embed_tokens.onnx``: input_ids -> inputs_embeds
* ``decoder_model_merged.onnx``: inputs_embeds, attention_mask, position_ids, past_key_values.*
  -> logits, present.*

plus quantised variants (``*_int8.onnx``, ``*_uint8.onnx``) and the configs and tokenizer
files the engine reads. The graphs are written by export.build's hand-written builders (the
same ones `models pull` runs on a user's machine without torch), fed the loaded model's
weights; only a model they cannot write is traced with torch.onnx. Every fp32 graph is checked
against the unmodified transformers model before this function returns; a mismatch raises
``ExportError``.

It needs the ``export`` extra (torch, transformers, onnx). Those are imported inside the
functions so the rest of the app never pays for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .build import build_graphs, check_quantizations, unsupported
from .config import read_config
from .layout import DECODER_GRAPH, EMBED_GRAPH, VISION_GRAPH, ExportError, copy_side_files, normalise
from .quantize import quantize_variants
from .weights import torch_weights

# fp32 ONNX vs PyTorch: a graph passes when max|onnx - torch| <= ATOL + RTOL * max|torch|.
# The scale term lets the same check serve the tiny model and a full-size one.
ATOL = 1e-4
RTOL = 1e-4


def require_export_extra() -> None:
    """Raise a clear error when torch / transformers / onnx are missing."""
    missing = []
    for name in ("torch", "transformers", "onnx"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"exporting needs {', '.join(missing)}, which the installed app does not carry: "
            "run it from a Python install with the export extra "
            "(`pip install 'smolvlm-desktop[export]'`)"
        )


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' progress bars (weights of a few MB load in a blink), then
    restore whatever the caller had."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()


# --- export-friendly modules ---------------------------------------------------------------
def _torch_modules() -> tuple[Any, Any]:
    import torch
    from torch import nn

    return torch, nn


def _make_vision_module(vlm: Any) -> Any:
    """Wrap the vision tower + connector of an Idefics3Model / SmolVLMModel as one module,
    to trace a vision tower export.vision cannot write (see its unsupported_reason).

    Mirrors ``get_image_features`` but avoids the two constructs the ONNX exporter cannot
    handle: ``Tensor.unfold`` for the patch mask (a reshape + sum does the same) and
    ``torch.bucketize`` for the position ids (counting boundaries <= x is its definition
    for ``right=True``). The transformer layers are the original modules.
    """
    torch, nn = _torch_modules()

    class VisionEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            vision = vlm.vision_model
            self.embeddings = vision.embeddings
            self.encoder = vision.encoder
            self.post_layernorm = vision.post_layernorm
            self.projection = vlm.connector.modality_projection
            self.patch = int(vision.config.patch_size)
            self.side = int(self.embeddings.num_patches_per_side)
            self.scale = int(vlm.connector.scale_factor)
            # The same float32 boundaries the reference computes on every call.
            self.register_buffer("boundaries", torch.arange(1 / self.side, 1.0, 1 / self.side),
                                 persistent=False)

        def forward(self, pixel_values: Any, pixel_attention_mask: Any) -> Any:
            _, _, channels, height, width = pixel_values.shape
            pixels = pixel_values.reshape(-1, channels, height, width)
            mask = pixel_attention_mask.reshape(-1, height, width)
            real = _real_images(pixels)
            pixels, mask = pixels[real], mask[real]
            patch_mask = self._patch_mask(mask, height, width)
            embeds = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
            embeds = embeds + self.embeddings.position_embedding(self._position_ids(patch_mask))
            flat_mask = patch_mask.reshape(patch_mask.shape[0], -1)
            additive = (1.0 - flat_mask.to(embeds.dtype))[:, None, None, :] * torch.finfo(embeds.dtype).min
            hidden = self.encoder(inputs_embeds=embeds, attention_mask=additive).last_hidden_state
            hidden = self.post_layernorm(hidden)
            return self.projection(self._pixel_shuffle(hidden, height // self.patch, width // self.patch))

        def _patch_mask(self, mask: Any, height: Any, width: Any) -> Any:
            """A patch is real when any of its pixels is (the reference's unfold + sum > 0)."""
            p = self.patch
            grid = mask.to(torch.int32).reshape(-1, height // p, p, width // p, p)
            return grid.sum(dim=(2, 4)) > 0

        def _position_ids(self, patch_mask: Any) -> Any:
            """Idefics3VisionEmbeddings' fractional position buckets, without bucketize."""
            rows = patch_mask[:, :, 0].sum(dim=1)
            cols = patch_mask[:, 0, :].sum(dim=1)
            h_idx = torch.arange(patch_mask.shape[1], dtype=torch.float32)
            w_idx = torch.arange(patch_mask.shape[2], dtype=torch.float32)
            frac_h = torch.clamp(h_idx[None, :] * (1.0 / rows)[:, None], max=1.0 - 1e-6)
            frac_w = torch.clamp(w_idx[None, :] * (1.0 / cols)[:, None], max=1.0 - 1e-6)
            bucket_h = (frac_h[..., None] >= self.boundaries).sum(dim=-1)
            bucket_w = (frac_w[..., None] >= self.boundaries).sum(dim=-1)
            pos = bucket_h[:, :, None] * self.side + bucket_w[:, None, :]
            pos = pos.reshape(patch_mask.shape[0], -1)
            return torch.where(patch_mask.reshape(patch_mask.shape[0], -1), pos, torch.zeros_like(pos))

        def _pixel_shuffle(self, x: Any, rows: Any, cols: Any) -> Any:
            """Idefics3Connector.pixel_shuffle with the grid taken from the image shape
            (identical for square tiles, which is all the processor produces)."""
            s, dim = self.scale, x.shape[-1]
            x = x.reshape(-1, rows, cols // s, dim * s).permute(0, 2, 1, 3)
            x = x.reshape(-1, cols // s, rows // s, dim * s * s).permute(0, 2, 1, 3)
            return x.reshape(-1, (rows // s) * (cols // s), dim * s * s)

    def _real_images(pixels: Any) -> Any:
        """Images that are not all-zero padding; if none is real keep the first, as
        SmolVLM's reference does, so the graph never returns an empty tensor."""
        real = (pixels != 0).reshape(pixels.shape[0], -1).to(torch.int32).sum(dim=1) > 0
        first = torch.arange(pixels.shape[0]) == 0
        return real | (first & ~(real.to(torch.int32).sum() > 0))

    return VisionEncoder().eval()


def _make_decoder_module(lm: Any) -> Any:
    """The text model + LM head with the KV cache as flat tensors in and out.

    The 2-D attention mask is turned into the 4-D additive causal mask here, because
    transformers' own mask builder is written for torch.export, not for ONNX tracing;
    given a 4-D mask the model uses it as is.
    """
    torch, nn = _torch_modules()
    from transformers import DynamicCache

    text_config = lm.config.get_text_config(decoder=True)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_model = lm.model.text_model
            self.lm_head = lm.lm_head
            self.num_layers = int(text_config.num_hidden_layers)

        def forward(self, inputs_embeds: Any, attention_mask: Any, position_ids: Any, *past: Any) -> Any:
            cache = DynamicCache(config=text_config)
            for i, layer in enumerate(cache.layers):
                layer.lazy_initialization(past[2 * i], past[2 * i + 1])
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            mask = causal_mask(attention_mask, inputs_embeds.shape[1], inputs_embeds.dtype)
            out = self.text_model(inputs_embeds=inputs_embeds, attention_mask=mask,
                                  position_ids=position_ids, use_cache=True,
                                  **cache_argument(self.text_model, cache))
            logits = self.lm_head(out.last_hidden_state)
            presents = []
            for layer in cache.layers:
                presents += [layer.keys, layer.values]
            return (logits, *presents)

    return Decoder().eval()


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """The KV-cache keyword for `model`'s forward: transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old name goes in 5.40); older ones know only it."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned, under either name (see cache_argument)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def causal_mask(attention_mask: Any, query_length: Any, dtype: Any) -> Any:
    """[batch, past+seq] 0/1 mask -> [batch, 1, seq, past+seq] additive mask (0 or dtype min):
    a query at absolute position past+i sees keys 0..past+i that are not padding."""
    torch, _ = _torch_modules()
    total = attention_mask.shape[1]
    q_pos = torch.arange(query_length) + (total - query_length)
    k_pos = torch.arange(total)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None] & (attention_mask[:, None, None, :] != 0)
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


# --- loading ---------------------------------------------------------------------------------
def load_checkpoint(src: Path) -> Any:
    """The model in fp32 eval mode with eager attention (the path that exports to plain ops)."""
    require_export_extra()
    import torch
    from transformers import AutoConfig, Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

    classes = {"idefics3": Idefics3ForConditionalGeneration, "smolvlm": SmolVLMForConditionalGeneration}
    config = AutoConfig.from_pretrained(src)
    if config.model_type not in classes:
        raise ExportError(f"{src}: model_type {config.model_type!r} is not idefics3 or smolvlm")
    with quiet_progress_bars():
        model = classes[config.model_type].from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


# --- export ----------------------------------------------------------------------------------
def _graph_specs(lm: Any) -> dict[str, dict[str, Any]]:
    """For each graph that may need tracing (vision, decoder): module, example inputs, names and
    dynamic axes."""
    import torch

    text = lm.config.get_text_config(decoder=True)
    vision = lm.config.vision_config
    layers, kv_heads = int(text.num_hidden_layers), int(text.num_key_value_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    tile = int(vision.image_size)
    gen = torch.Generator().manual_seed(0)

    # Example inputs: batch 2 and non-trivial lengths, so no size is traced as a constant 1.
    pixels = torch.randn(2, 2, 3, tile, tile, generator=gen)
    pixel_mask = torch.ones(2, 2, tile, tile, dtype=torch.bool)
    batch, seq, past = 2, 3, 4
    past_kv = [torch.randn(batch, kv_heads, past, head_dim, generator=gen) for _ in range(2 * layers)]
    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    past_axes = {0: "batch_size", 2: "past_sequence_length"}
    present_axes = {0: "batch_size", 2: "total_sequence_length"}
    return {
        VISION_GRAPH: {
            "module": _make_vision_module(lm.model),
            "args": (pixels, pixel_mask),
            "inputs": ["pixel_values", "pixel_attention_mask"],
            "outputs": ["image_features"],
            "axes": {
                "pixel_values": {0: "batch_size", 1: "num_images", 3: "height", 4: "width"},
                "pixel_attention_mask": {0: "batch_size", 1: "num_images", 2: "height", 3: "width"},
                "image_features": {0: "num_real_images", 1: "image_seq_len"},
            },
        },
        DECODER_GRAPH: {
            "module": _make_decoder_module(lm),
            "args": (
                torch.randn(batch, seq, int(text.hidden_size), generator=gen),
                torch.ones(batch, past + seq, dtype=torch.int64),
                torch.arange(past, past + seq).repeat(batch, 1),
                *past_kv,
            ),
            "inputs": ["inputs_embeds", "attention_mask", "position_ids", *past_names],
            "outputs": ["logits", *present_names],
            "axes": {
                "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
                "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
                "position_ids": {0: "batch_size", 1: "sequence_length"},
                "logits": {0: "batch_size", 1: "sequence_length"},
                **{name: past_axes for name in past_names},
                **{name: present_axes for name in present_names},
            },
        },
    }


def _export_graph(spec: dict[str, Any], path: Path, opset: int) -> None:
    """TorchScript-based torch.onnx.export, then strip what would make the bytes vary."""
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python values it freezes (config numbers): expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec["module"],
            spec["args"],
            str(path),
            input_names=spec["inputs"],
            output_names=spec["outputs"],
            dynamic_axes=spec["axes"],
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    normalise(path)


def export_checkpoint(src: Path, dst: Path, quantize: Sequence[str] = ("int8",), opset: int = 17) -> None:
    """Export the checkpoint in ``src`` into a model folder ``dst`` in the official layout.

    The graphs are written by the same builders a user's machine runs (export.build), from the
    weights of the loaded transformers model; only a model those cannot write is traced. Every
    fp32 graph is then verified against the unmodified transformers model (``ExportError`` on
    any mismatch) and ``quantize`` lists the extra variants to write ("int8", "uint8"). A FastVLM
    checkpoint (model_type fast_vlm) is exported by export.fastvlm instead.
    """
    src, dst = Path(src), Path(dst)
    check_quantizations(quantize)
    from .fastvlm import export_fastvlm, is_fastvlm

    if is_fastvlm(src):  # the FastVLM family: export/fastvlm.py
        export_fastvlm(src, dst, quantize, opset)
        return
    lm = load_checkpoint(src)
    config = read_config(src)
    onnx_dir = dst / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    traced = unsupported(config)
    build_graphs(config, torch_weights(lm), onnx_dir, opset, skip=list(traced))
    specs = _graph_specs(lm)
    for name in traced:
        _export_graph(specs[name], onnx_dir / f"{name}.onnx", opset)
    verify_export(lm, onnx_dir)
    quantize_variants(onnx_dir, quantize, config.text)
    copy_side_files(src, dst)


# --- verification ----------------------------------------------------------------------------
def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check(name: str, got: np.ndarray, want: Any) -> float:
    """Compare one output; return the max abs diff or raise ExportError."""
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    if got.shape != want.shape:
        raise ExportError(f"{name}: ONNX shape {got.shape} != PyTorch shape {want.shape}")
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    limit = ATOL + RTOL * float(np.max(np.abs(want))) if want.size else ATOL
    if not diff <= limit:
        raise ExportError(f"{name}: ONNX differs from PyTorch by {diff:.3g} (limit {limit:.3g})")
    return diff


def verify_export(lm: Any, onnx_dir: Path) -> dict[str, float]:
    """Run each fp32 graph in ONNX Runtime and compare with the unmodified transformers
    model on fresh random inputs with shapes unlike the traced ones. Returns max diffs."""
    return {
        VISION_GRAPH: verify_vision(lm, _session(onnx_dir / f"{VISION_GRAPH}.onnx")),
        EMBED_GRAPH: verify_embed(lm, _session(onnx_dir / f"{EMBED_GRAPH}.onnx")),
        DECODER_GRAPH: verify_decoder(lm, _session(onnx_dir / f"{DECODER_GRAPH}.onnx")),
    }


def verify_vision(lm: Any, session: Any, seed: int = 1) -> float:
    """Three images: one full, one only partly real (padded bottom/right), one padding; then
    the full one alone (a batch with no padding takes the graph's unmasked attention)."""
    import torch

    tile = int(lm.config.vision_config.image_size)
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, 3, tile, tile, generator=gen)
    mask = torch.ones(1, 3, tile, tile, dtype=torch.bool)
    mask[0, 1, tile * 5 // 8 :, :] = False
    mask[0, 1, :, tile * 3 // 4 :] = False
    pixels[0, 1] *= mask[0, 1]
    pixels[0, 2] = 0
    mask[0, 2] = False
    padded = _check_vision(lm, session, pixels, mask, "vision_encoder.image_features")
    full = _check_vision(lm, session, pixels[:, :1], mask[:, :1], "vision_encoder.image_features (no padding)")
    return max(padded, full)


def _check_vision(lm: Any, session: Any, pixels: Any, mask: Any, name: str) -> float:
    """The vision graph against get_image_features on the same images; the max abs diff."""
    import torch

    with torch.no_grad():
        ref = lm.model.get_image_features(pixels, mask).pooler_output
    features = torch.cat(list(ref)) if isinstance(ref, (list, tuple)) else ref
    (got,) = session.run(None, {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy()})
    return _check(name, got.reshape(-1, got.shape[-1]), features.reshape(-1, got.shape[-1]))


def verify_embed(lm: Any, session: Any, seed: int = 2) -> float:
    import torch

    vocab = int(lm.config.get_text_config(decoder=True).vocab_size)
    ids = torch.randint(0, vocab, (1, 7), generator=torch.Generator().manual_seed(seed))
    ids[0, -1] = vocab - 1
    with torch.no_grad():
        want = lm.get_input_embeddings()(ids)
    (got,) = session.run(None, {"input_ids": ids.numpy()})
    return _check("embed_tokens.inputs_embeds", got, want)


def verify_decoder(lm: Any, session: Any, seed: int = 3) -> float:
    """A prefill with an empty cache, then one decoding step that reuses it."""
    import torch
    from transformers import DynamicCache

    text = lm.config.get_text_config(decoder=True)
    gen = torch.Generator().manual_seed(seed)
    layers = int(text.num_hidden_layers)
    prompt = torch.randn(1, 5, int(text.hidden_size), generator=gen)
    step = torch.randn(1, 1, int(text.hidden_size), generator=gen)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    empty = np.zeros((1, int(text.num_key_value_heads), 0, head_dim), dtype=np.float32)
    past = {f"past_key_values.{i}.{k}": empty for i in range(layers) for k in ("key", "value")}

    cache = DynamicCache(config=text)
    worst = 0.0
    for embeds, start in ((prompt, 0), (step, prompt.shape[1])):
        total = start + embeds.shape[1]
        mask = torch.ones(1, total, dtype=torch.int64)
        positions = torch.arange(start, total)[None, :]
        with torch.no_grad():
            ref = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                     **cache_argument(lm, cache))
        outs = session.run(None, {"inputs_embeds": embeds.numpy(), "attention_mask": mask.numpy(),
                                  "position_ids": positions.numpy(), **past})
        worst = max(worst, _check(f"decoder logits (past {start})", outs[0], ref.logits))
        for i in range(layers):
            worst = max(worst, _check(f"present.{i}.key", outs[1 + 2 * i], cache.layers[i].keys))
            worst = max(worst, _check(f"present.{i}.value", outs[2 + 2 * i], cache.layers[i].values))
        past = {f"past_key_values.{i}.{k}": outs[1 + 2 * i + j]
                for i in range(layers) for j, k in enumerate(("key", "value"))}
    return worst
