"""Build the tiny random-weight FastVLM in the official ONNX layout (smolvlm_desktop/data/tiny-fastvlm).

    python scripts/build_tiny_fastvlm.py OUT_DIR        # needs torch, torchvision, timm, transformers

Architecturally real, tiny: transformers' FastVlmForConditionalGeneration with a Qwen2 text
model (q/k/v biases, GQA, LM head tied to the embedding as in FastVLM-0.5B) of 2 layers and
hidden size 64, and timm's fastvit_mci3 vision tower
(the FastViTHD of FastVLM: RepMixer stages, then attention stages with conditional position
encoding, downsampling 64 times) with one block per stage and narrow channels. Pictures are
256 px (crop) so one vision pass gives (256 / 64)^2 = 16 image tokens; the real model reads
1024 px and gives 256. Weights are random, drawn from a fixed seed: `build_model()` rebuilds
the very same model, which is how tests/test_fastvlm_reference.py checks the ONNX graphs
against transformers token by token.

The graphs are the project's own exporter's (export.fastvlm, as `models export` writes them):
the decoder and the embedding op by op from the weights, the vision tower traced by torch.onnx,
each checked against transformers; int8 variants as export.quantize writes them (the decoder's
8-bit block weights, the others dynamic int8). File, input and output names are those of
onnx-community/FastVLM-0.5B-ONNX (docs/FASTVLM_FORMAT.md): vision_encoder.onnx (pixel_values
-> image_features), embed_tokens.onnx (input_ids -> inputs_embeds), decoder_model_merged.onnx
(inputs_embeds, attention_mask, position_ids, past_key_values.N.key/value -> logits,
present.N.key/value; plus the optional logits_to_keep). `trace_official()` writes the three
graphs the way the official release was made (everything traced by torch.onnx, dynamic int8),
for the reference tests to compare the two. The folder's config.json is the flat llava_qwen2
form of the official release; transformers_config.json keeps the transformers-native
FastVlmConfig the weights were built with.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smolvlm_desktop.export import tiny_fastvlm as tf  # noqa: E402

SEED = tf.SEED
CROP = tf.TINY_CROP  # pixels; the real model: 1024
PATCH = tf.PATCH  # the encoder's downsampling: 2^6
IMAGE_SEQ_LEN = (CROP // PATCH) ** 2
OPSET = 17

def build_tokenizer() -> Any:
    """A byte-level BPE (Qwen2's kind) with a few hundred merges and Qwen2's special tokens."""
    return tf.build_tokenizer()

def build_model(vocab_size: int, image_token_id: int) -> Any:
    """The tiny FastVlmForConditionalGeneration, random weights from SEED (fp32, eval), its
    LM head tied to std-1 token embeddings."""
    return tf.build_model(tf.tiny_config(vocab_size, image_token_id), SEED, embed_std=tf.TINY_EMBED_STD)

def trace_official(model: Any, out: Path) -> None:
    """The three graphs traced by torch.onnx under the official names, and their dynamic int8
    variants: how the official release's files were made (for the reference tests)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on frozen Python values and its own deprecation
        _trace(model, out)
    quantize_official(out)


def _trace(model: Any, out: Path) -> None:
    import torch
    from transformers import DynamicCache

    onnx_dir = out / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    text = model.config.text_config
    layers, kv, head_dim = text.num_hidden_layers, text.num_key_value_heads, text.hidden_size // text.num_attention_heads

    class Vision(torch.nn.Module):
        def forward(self, pixel_values):
            return model.model.get_image_features(pixel_values=pixel_values).pooler_output

    class Embed(torch.nn.Module):
        def forward(self, input_ids):
            return model.model.language_model.embed_tokens(input_ids)

    class Decoder(torch.nn.Module):
        def forward(self, inputs_embeds, attention_mask, position_ids, *past):
            cache = DynamicCache(config=text)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = model.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                             position_ids=position_ids, past_key_values=cache, use_cache=True)
            presents = []
            for i in range(layers):
                presents += [cache.layers[i].keys, cache.layers[i].values]
            return (model.lm_head(out.last_hidden_state), *presents)

    kw: dict[str, Any] = {"opset_version": OPSET, "dynamo": False, "do_constant_folding": True}
    torch.onnx.export(Vision(), (torch.rand(1, 3, CROP, CROP),), str(onnx_dir / "vision_encoder.onnx"),
                      input_names=["pixel_values"], output_names=["image_features"],
                      dynamic_axes={"pixel_values": {0: "batch_size", 2: "height", 3: "width"},
                                    "image_features": {0: "batch_size", 1: "num_image_tokens"}}, **kw)
    torch.onnx.export(Embed(), (torch.tensor([[1, 2, 3]]),), str(onnx_dir / "embed_tokens.onnx"),
                      input_names=["input_ids"], output_names=["inputs_embeds"],
                      dynamic_axes={"input_ids": {0: "batch_size", 1: "sequence_length"},
                                    "inputs_embeds": {0: "batch_size", 1: "sequence_length"}}, **kw)
    batch, seq, past_len = 2, 3, 4
    past_names = [f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    present_names = [f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    args = (torch.rand(batch, seq, text.hidden_size), torch.ones(batch, past_len + seq, dtype=torch.int64),
            torch.arange(past_len, past_len + seq).repeat(batch, 1),
            *[torch.rand(batch, kv, past_len, head_dim) for _ in past_names])
    axes = {"inputs_embeds": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names})
    axes.update({n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names})
    torch.onnx.export(Decoder(), args, str(onnx_dir / "decoder_model_merged.onnx"),
                      input_names=["inputs_embeds", "attention_mask", "position_ids", *past_names],
                      output_names=["logits", *present_names], dynamic_axes=axes, **kw)

def quantize_official(out: Path) -> None:
    """The int8 variant of each traced graph, as the official release's `_int8` files: dynamic
    quantisation of the MatMul and Gather weights (export.quantize, numpy only)."""
    from smolvlm_desktop.export.fastvlm import constants_to_initializers
    from smolvlm_desktop.export.quantize import quantize_graph

    for name in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        constants_to_initializers(out / "onnx" / f"{name}.onnx")
        quantize_graph(out / "onnx" / f"{name}.onnx", out / "onnx" / f"{name}_int8.onnx", "int8")

def write_folder(out: Path) -> None:
    """The committed folder: the project's exporter's graphs, each checked against transformers."""
    tok = build_tokenizer()
    model = build_model(tok.get_vocab_size(), tok.token_to_id("<image>"))
    tf.build_folder(out, model, tok, CROP)

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write_folder(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}")
