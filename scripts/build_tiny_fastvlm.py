"""Build the tiny random-weight FastVLM in the official ONNX layout (smolvlm_desktop/data/tiny-fastvlm).

    python scripts/build_tiny_fastvlm.py OUT_DIR        # needs torch, torchvision, timm, transformers

Architecturally real, tiny: transformers' FastVlmForConditionalGeneration with a Qwen2 text
model (q/k/v biases, GQA) of 2 layers and hidden size 64, and timm's fastvit_mci3 vision tower
(the FastViTHD of FastVLM: RepMixer stages, then attention stages with conditional position
encoding, downsampling 64 times) with one block per stage and narrow channels. Pictures are
256 px (crop) so one vision pass gives (256 / 64)^2 = 16 image tokens; the real model reads
1024 px and gives 256. Weights are random, drawn from a fixed seed: `build_model()` rebuilds
the very same model, which is how tests/test_fastvlm_reference.py checks the ONNX graphs
against transformers token by token.

The three graphs are exported with torch.onnx from the transformers modules, with the file,
input and output names of onnx-community/FastVLM-0.5B-ONNX (docs/FASTVLM_FORMAT.md):
vision_encoder.onnx (pixel_values -> image_features), embed_tokens.onnx (input_ids ->
inputs_embeds), decoder_model_merged.onnx (inputs_embeds, attention_mask, position_ids,
past_key_values.N.key/value -> logits, present.N.key/value). The folder's config.json is the
flat llava_qwen2 form of the official release; transformers_config.json keeps the
transformers-native FastVlmConfig the weights were built with.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TIMM_FUSED_ATTN", "0")  # plain attention, as transformers' conversion does

SEED = 1234
CROP = 256  # pixels; the real model: 1024
PATCH = 64  # the encoder's downsampling: 2^6
IMAGE_SEQ_LEN = (CROP // PATCH) ** 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
OPSET = 17
GAIN = 1.5  # weight std x sqrt(fan-in): large enough that the picture survives 5 random stages
CHAT_TEMPLATE = (  # transformers' FastVLM conversion script's template (docs/FASTVLM_FORMAT.md)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
VISION_ARGS = {  # fastvit_mci3's structure, narrower and one block per stage
    "inference_mode": True, "layers": [1, 1, 1, 1, 1], "embed_dims": [8, 16, 32, 64, 64],
}


def build_tokenizer() -> Any:
    """A byte-level BPE (Qwen2's kind) with a few hundred merges and Qwen2's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from smolvlm_desktop.export.tiny import train_bpe_merges

    text = ("A photo of a cat sitting on a red sofa next to a window. The image shows a chart "
            "with numbers, a document with text, and a street with cars and people. ") * 4
    merges = train_bpe_merges(text, max_merges=300)
    vocab = {token: i for i, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


def build_model(vocab_size: int, image_token_id: int) -> Any:
    """The tiny FastVlmForConditionalGeneration, random weights from SEED (fp32, eval)."""
    import torch
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration

    config = FastVlmConfig(
        vision_config={"model_type": "timm_wrapper", "architecture": "fastvit_mci3", "do_pooling": False,
                       "hidden_size": 128, "num_labels": 0, "model_args": VISION_ARGS},
        text_config={"model_type": "qwen2", "vocab_size": vocab_size, "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 512,
                     "rope_theta": 1000000.0, "tie_word_embeddings": False,
                     "bos_token_id": 0, "eos_token_id": 0},
        image_token_index=image_token_id, image_seq_length=IMAGE_SEQ_LEN,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = FastVlmForConditionalGeneration(config).eval().requires_grad_(False)
    with torch.no_grad():  # std 1/sqrt(fan-in): the init's 0.02 would let the picture fade out in the encoder
        for name, p in model.named_parameters():
            if "layer_scale" in name:  # residual branch weights, [C, 1, 1]
                p.normal_(0.0, 0.2)
            elif p.dim() >= 2:
                p.normal_(0.0, GAIN / max(p[0].numel(), 1) ** 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.01)
    return model


def export(model: Any, out: Path) -> None:
    """The three graphs, traced by torch.onnx, under the official names."""
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


def constants_to_initializers(path: Path) -> None:
    """Weights as initializers, as in the official files: the tracer wrote the (frozen)
    parameters as Constant nodes, which the quantiser does not look at."""
    import onnx

    model = onnx.load(str(path))
    kept, moved = [], []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and len(value.t.dims) >= 2:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            moved.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(moved)
    onnx.save(model, str(path))


def quantize(out: Path) -> None:
    """The int8 variant of each graph, as the official release's `_int8` files: dynamic
    quantisation of the MatMul and Gather weights (export.quantize, numpy only)."""
    from smolvlm_desktop.export.quantize import quantize_graph

    for name in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        constants_to_initializers(out / "onnx" / f"{name}.onnx")
        quantize_graph(out / "onnx" / f"{name}.onnx", out / "onnx" / f"{name}_int8.onnx", "int8")


def write_folder(out: Path) -> None:
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    vocab_size = tok.get_vocab_size()
    model = build_model(vocab_size, ids["<image>"])
    out.mkdir(parents=True, exist_ok=True)
    export(model, out)
    quantize(out)
    text = model.config.text_config
    (out / "tokenizer.json").write_text(tok.to_str(pretty=False) + "\n", encoding="utf-8")

    def dump(name: str, data: dict) -> None:
        (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    dump("config.json", {  # the official release's flat llava_qwen2 form
        "architectures": ["LlavaQwen2ForCausalLM"], "model_type": "llava_qwen2",
        "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers, "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads, "max_position_embeddings": text.max_position_embeddings,
        "rope_theta": 1000000.0, "rms_norm_eps": text.rms_norm_eps, "vocab_size": vocab_size,
        "tie_word_embeddings": False, "image_token_index": ids["<image>"],
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "mm_hidden_size": model.config.vision_config.hidden_size, "mm_projector_type": "mlp2x_gelu",
    })
    dump("transformers_config.json", model.config.to_dict())
    dump("generation_config.json", {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]})
    dump("preprocessor_config.json", {
        "crop_size": {"height": CROP, "width": CROP}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.0, 0.0, 0.0],
        "image_processor_type": "CLIPImageProcessor", "image_std": [1.0, 1.0, 1.0],
        "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": CROP}})
    dump("processor_config.json", {"image_token": "<image>", "num_additional_image_tokens": 0,
                                   "patch_size": PATCH, "processor_class": "LlavaProcessor"})
    dump("tokenizer_config.json", {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>",
                                   "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
                                   "model_max_length": text.max_position_embeddings})
    (out / "README.md").write_text(
        "# tiny-fastvlm\n\nRandom weights, for tests only: a FastVLM (FastViTHD + Qwen2) a few MB in size, "
        "in the file layout of onnx-community/FastVLM-0.5B-ONNX. Built by scripts/build_tiny_fastvlm.py; "
        "its answers are noise. No Apple weights are in it.\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    write_folder(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}")
