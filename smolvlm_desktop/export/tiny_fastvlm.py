"""Random-weight FastVLMs for the tests (tiny, committed) and the benchmark (FastVLM-0.5B's size).

Both are transformers' FastVlmForConditionalGeneration (a Qwen2 text model, timm's
fastvit_mci3 vision tower) with seeded random weights, written in the official layout by
export.fastvlm (`build_folder`). Building needs torch, torchvision, timm and transformers that
load together (scripts/fastvlm_reference.sh makes such an environment); reading the result
needs none of them.

Why random weights are enough: the tiny model proves the graphs compute what transformers
computes on the same weights (token for token); the full-size one is only timed, and speed
depends on the shapes, not on the values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEED = 1234
PATCH = 64  # the encoder's downsampling (2^6): a crop of C pixels gives (C / 64)^2 image tokens
TINY_CROP = 256  # pixels: 16 image tokens (the real model: 1024 and 256)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
# Where Qwen2's tokenizer puts them (FastVLM-0.5B: <|endoftext|> 151643 ... <image> 151646).
QWEN2_FIRST_SPECIAL = 151643
GAIN = 1.5  # weight std x sqrt(fan-in): large enough that the picture survives 5 random stages
# The tiny's token embedding std, shared by its tied LM head (FastVLM-0.5B's Qwen2 ties it),
# as SmolVLM's tiny has it (export/tiny.py). With std 1 rows the token read at a position adds
# its own row to the residual stream, so that row's logit (~ its squared norm, 64) mostly
# stands far above the others (std ~8): a clear winner, the input token repeated, which int8
# rounding does not flip; the untied head's logits were near-independent draws with many
# near ties (tests/test_fastvlm.py has the figures).
TINY_EMBED_STD = 1.0
CHAT_TEMPLATE = (  # transformers' FastVLM conversion script's template (docs/FASTVLM_FORMAT.md)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TINY_VISION_ARGS = {  # fastvit_mci3's structure, narrower and one block per stage
    "inference_mode": True, "layers": [1, 1, 1, 1, 1], "embed_dims": [8, 16, 32, 64, 64],
}


def build_tokenizer(first_special: int | None = None) -> Any:
    """A byte-level BPE (Qwen2's kind) with a few hundred merges and Qwen2's special tokens,
    right after it (the tiny model) or, padded with filler words, at `first_special` (Qwen2's
    ids, for a full-size vocabulary)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from .tiny import _filler_words, train_bpe_merges

    text = ("A photo of a cat sitting on a red sofa next to a window. The image shows a chart "
            "with numbers, a document with text, and a street with cars and people. ") * 4
    merges = train_bpe_merges(text, max_merges=300)
    vocab = {token: i for i, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if first_special is not None:
        fillers = (w for w in _filler_words() if w not in vocab)
        while len(vocab) < first_special:
            vocab[next(fillers)] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


def tiny_config(vocab_size: int, image_token_id: int) -> dict[str, Any]:
    """FastVlmConfig arguments of the tiny model: 2 Qwen2 layers of 64 with a tied LM head, one
    block per stage."""
    return {
        "vision_config": {"model_type": "timm_wrapper", "architecture": "fastvit_mci3", "do_pooling": False,
                          "hidden_size": 128, "num_labels": 0, "model_args": TINY_VISION_ARGS},
        "text_config": {"model_type": "qwen2", "vocab_size": vocab_size, "hidden_size": 64,
                        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "max_position_embeddings": 512,
                        "rope_theta": 1000000.0, "tie_word_embeddings": True,
                        "bos_token_id": 0, "eos_token_id": 0},
        "image_token_index": image_token_id, "image_seq_length": (TINY_CROP // PATCH) ** 2,
        "tie_word_embeddings": True,  # FastVLM-0.5B's Qwen2-0.5B ties its LM head (fastvlm_05b_config)
    }


def fastvlm_05b_config(image_token_id: int = QWEN2_FIRST_SPECIAL + 3) -> dict[str, Any]:
    """FastVlmConfig arguments at FastVLM-0.5B's sizes: Qwen2-0.5B (896 wide, 24 layers, 14
    heads over 2 key/value heads, 151,936 tokens, tied LM head, RoPE theta 10^6) and the full
    fastvit_mci3 (FastViTHD: 2/12/24/4/2 blocks, 96-1536 channels) giving 3072 features per
    image token, projected to 896."""
    return {
        "vision_config": {"model_type": "timm_wrapper", "architecture": "fastvit_mci3", "do_pooling": False,
                          "hidden_size": 3072, "num_labels": 0, "model_args": {"inference_mode": True}},
        "text_config": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
                        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                        "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                        "rope_theta": 1000000.0, "tie_word_embeddings": True,
                        "bos_token_id": QWEN2_FIRST_SPECIAL, "eos_token_id": QWEN2_FIRST_SPECIAL + 2},
        "image_token_index": image_token_id, "image_seq_length": (1024 // PATCH) ** 2,
        "tie_word_embeddings": True,
    }


def build_model(config_kwargs: dict[str, Any], seed: int = SEED, layer_scale: float = 0.2,
                gain: float = GAIN, bias: float = 0.01, embed_std: float | None = None) -> Any:
    """FastVlmForConditionalGeneration with random weights from `seed` (fp32, eval): each matrix
    or kernel with std `gain` / sqrt(fan-in), the encoder's residual branch weights with std
    `layer_scale`, biases with std `bias`; then, if `embed_std` is given, the token embedding
    (and so a tied LM head) redrawn with that std, last, so that every other weight stays as
    it was. A deep model wants other values than the tiny's (the full-size one: 1, 0.02 and no
    biases): at 1.5 and 0.2 its 24 layers and 44 blocks amplify any difference, an int8
    rounding included, so far that int8 against fp32 measures the chaos rather than the
    quantisation; at gain 1 with biases, the picture fades to 0.2% of the image features (the
    rest is the biases), so that int8 would look perfect for the wrong reason."""
    import torch
    from timm.layers import set_fused_attn
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration

    set_fused_attn(False)  # plain attention, as transformers' conversion script builds it
    config = FastVlmConfig(**config_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = FastVlmForConditionalGeneration(config).eval().requires_grad_(False)
    with torch.no_grad():  # std 1/sqrt(fan-in): the init's 0.02 would let the picture fade out in the encoder
        for name, p in model.named_parameters():
            if "layer_scale" in name:  # residual branch weights, [C, 1, 1]
                p.normal_(0.0, layer_scale)
            elif p.dim() >= 2:
                p.normal_(0.0, gain / max(p[0].numel(), 1) ** 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, bias) if bias else p.zero_()
        if embed_std is not None:
            model.get_input_embeddings().weight.normal_(0.0, embed_std)
    return model


def write_side_files(out: Path, model: Any, tok: Any, crop: int) -> None:
    """config.json (the official release's flat llava_qwen2 form), transformers_config.json
    (the FastVlmConfig the weights were built with), tokenizer and processor files."""
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    text = model.config.text_config
    (out / "tokenizer.json").write_text(tok.to_str(pretty=False) + "\n", encoding="utf-8")

    def dump(name: str, data: dict) -> None:
        (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    dump("config.json", {
        "architectures": ["LlavaQwen2ForCausalLM"], "model_type": "llava_qwen2",
        "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers, "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads, "max_position_embeddings": text.max_position_embeddings,
        "rope_theta": 1000000.0, "rms_norm_eps": text.rms_norm_eps, "vocab_size": text.vocab_size,
        "tie_word_embeddings": bool(model.config.tie_word_embeddings), "image_token_index": ids["<image>"],
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "mm_hidden_size": model.config.vision_config.hidden_size, "mm_projector_type": "mlp2x_gelu",
    })
    dump("transformers_config.json", model.config.to_dict())
    dump("generation_config.json", {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]})
    dump("preprocessor_config.json", {
        "crop_size": {"height": crop, "width": crop}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.0, 0.0, 0.0],
        "image_processor_type": "CLIPImageProcessor", "image_std": [1.0, 1.0, 1.0],
        "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": crop}})
    dump("processor_config.json", {"image_token": "<image>", "num_additional_image_tokens": 0,
                                   "patch_size": PATCH, "processor_class": "LlavaProcessor"})
    dump("tokenizer_config.json", {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>",
                                   "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
                                   "model_max_length": text.max_position_embeddings})
    (out / "README.md").write_text(
        "# A random-weight FastVLM\n\nRandom weights, for tests and benchmarks only: a FastVLM (FastViTHD + Qwen2) "
        "in the file layout of onnx-community/FastVLM-0.5B-ONNX, built by smolvlm_desktop/export/tiny_fastvlm.py "
        "with the project's exporter; its answers are noise. No Apple weights are in it.\n", encoding="utf-8")


def build_folder(out: Path, model: Any, tok: Any, crop: int, quantize: tuple[str, ...] = ("int8",)) -> dict[str, float]:
    """The model folder at `out`: the side files, then export.fastvlm's graphs (each checked
    against `model`). Returns each fp32 graph's largest difference from transformers."""
    import tempfile

    from .fastvlm import export_fastvlm

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastvlm-side-") as tmp:
        side = Path(tmp)  # what export_fastvlm reads (config, crop) and copies over
        write_side_files(side, model, tok, crop)
        diffs = export_fastvlm(side, out, quantize=quantize, lm=model)
    write_side_files(out, model, tok, crop)  # README.md and transformers_config.json as well
    return diffs
