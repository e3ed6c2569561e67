"""A tiny SmolVLM with random weights, built locally, bit-for-bit the same every time.

Why it exists: these machines cannot download the real model, yet the engine, the window and
the tests need a model folder in exactly the official layout (same files, same graph names,
same vocabulary size and special-token ids). This module writes a PyTorch checkpoint of an
``Idefics3ForConditionalGeneration`` that is architecturally real but tiny, plus a tokenizer
and processor files that ``transformers`` loads like the real ones. ``export.checkpoint`` then turns
it into ONNX; ``scripts/build_tiny_model.py`` does both and commits the result.

Its answers are noise: the weights are random. Only the plumbing is real.

The tokenizer is built here, not downloaded: a byte-level BPE (GPT-2 style, like SmolLM2's)
learnt from a short built-in English text with a small deterministic trainer, padded with
pronounceable filler words up to id 49151, followed by SmolVLM's special tokens at their
official ids.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

# --- the architecture -------------------------------------------------------------------
# Every number the rest of the app needs is read back from the written files; these are
# only the knobs of this particular tiny model.
SEED = 20240611
TILE = 64  # vision tile edge in pixels (the real 256M model: 512)
PATCH = 8  # vision patch edge (real: 16)
SCALE_FACTOR = 2  # pixel-shuffle factor (real: 4)
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE_FACTOR**2  # 16 image tokens per tile
LONGEST_EDGE = 4 * TILE  # 256: a 4x4 grid of tiles at most (real: 2048)
VISION_HIDDEN = 32
VISION_LAYERS = 2
VISION_HEADS = 2
VISION_MLP = 64
# The 49280 x hidden embedding is stored twice per precision (embed_tokens graph and the
# decoder's tied LM head), so the text width is what decides the folder size.
TEXT_HIDDEN = 8
TEXT_LAYERS = 2
TEXT_HEADS = 2
TEXT_KV_HEADS = 1  # grouped-query attention, like SmolLM2
# Wider than hidden / heads (transformers' head_dim allows it): ONNX Runtime's
# GroupQueryAttention, which the exported decoder uses, takes head sizes that are multiples of 8.
TEXT_HEAD_DIM = 8
TEXT_MLP = 32
MAX_POSITIONS = 8192
# Bytes, the whole folder: it is committed and shipped in the wheel. Mostly the 49280-token
# embedding (five copies) and the decoder's RoPE tables, which run to MAX_POSITIONS (three
# copies: fp32, int8 and the int8 prompt decoder, 7.4 MB in all).
SIZE_BUDGET = 7_500_000

# --- the vocabulary (official SmolVLM-256M/500M ids) -------------------------------------
VOCAB_SIZE = 49280
BASE_VOCAB_SIZE = 49152  # ids below this belong to the BPE model
LEADING_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
GLOBAL_IMG = "<global-img>"  # 49152
FAKE_TOKEN = "<fake_token_around_image>"  # 49189
IMAGE_TOKEN = "<image>"  # 49190
END_OF_UTTERANCE = "<end_of_utterance>"  # 49279
IMAGE_TOKEN_ID = 49190
END_OF_UTTERANCE_ID = 49279

CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# A short English text so that common words are single tokens and prompts tokenise into
# something that looks like real text. Written for this file; any edit changes the model.
TRAINING_TEXT = """\
Describe this image. What is in this picture? The image shows a small brown dog sitting on
a green lawn in front of a white house. A woman is walking along the beach at sunset, and the
sky is orange and pink. There are two cats sleeping on a red sofa next to a window. A man in a
blue shirt is riding a bicycle down a busy city street. The photo was taken at night, so the
lights of the buildings are reflected in the river. Can you read the text on the sign? The
sign says that the store is open from nine in the morning until six in the evening. How many
people are in the picture? I can see three people: a child, a mother and a father. They are
standing near a tall tree in the park. What color is the car? The car is black and it is
parked in front of an old stone church. This is a close up photo of a yellow flower with a
bee on it. The background is blurry. A plate of food is on the wooden table: there is bread,
cheese, some fruit and a cup of coffee. The mountains in the distance are covered with snow,
and a lake is in the foreground. Write a short caption for this image. Answer the question
about the image in one sentence. The chart shows the number of visitors for each month of the
year; the highest value is in July and the lowest is in February. The screenshot shows a
window of a computer program with a menu, a toolbar and a list of files. A group of children
are playing football on a field while their parents watch. The kitchen has white walls, a
large fridge, and a bowl of apples on the counter. An airplane is flying over the clouds. The
document is a letter written by hand in black ink. It is raining and the people on the street
are holding umbrellas. A boat is sailing on the blue sea near a small island with palm trees.
The bird is standing on a branch and looking to the left. This is a map of the old town with
the main streets and the river. The girl is smiling and holding a book in her hands. There is
a clock on the wall that shows ten past four. The room is dark except for the light from the
lamp on the desk. Is there anything unusual in this image? No, it looks like an ordinary day.
Yes, the horse is wearing a hat, which is unusual. Thank you for the description. You are
welcome. The answer is yes. The answer is no. I do not know. Please describe the image in
detail, including the objects, the colors, the people and what they are doing.
User: What is the man holding? Assistant: The man is holding a camera.
User: Where was this picture taken? Assistant: It was taken in a garden in the summer.
User: What animals can you see? Assistant: I can see a dog, two cats and a bird.
User: Read the title of the book. Assistant: The title of the book is written in large
letters at the top of the cover. User: Is the door open or closed? Assistant: The door is
open and a light is on inside the house. User: What time of day is it? Assistant: It is early
in the morning; the sun is low and the shadows are long. User: Describe the weather.
Assistant: The weather is cloudy and cold, and there is some snow on the ground.
"""

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


# --- tokenizer ----------------------------------------------------------------------------
def _byte_level_words(text: str) -> Counter[tuple[str, ...]]:
    """Split text the way the tokenizer will (GPT-2 regex, bytes mapped to visible chars),
    then into single characters: the starting point of BPE training."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return Counter(tuple(word) for word, _ in pre.pre_tokenize_str(text))


def _merge_word(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe_merges(text: str, max_merges: int = 2000) -> list[tuple[str, str]]:
    """Learn BPE merges from text. Ties are broken by the pair itself, so the result never
    depends on hash order (the reason we do not use tokenizers' own trainer here)."""
    words = _byte_level_words(text)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        words = Counter({_merge_word(w, best): c for w, c in words.items()})
    return merges


def _filler_words() -> itertools.chain[str]:
    """Endless pronounceable nonsense ("Ġbako", "dimu", "Ġbakoda"...): the ids a random model
    samples most, so its noise at least reads like words separated by spaces."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    two = ["".join(p) for p in itertools.product(syllables, repeat=2)]
    three = ("".join(p) for p in itertools.product(syllables, repeat=3))
    return itertools.chain(("Ġ" + w for w in two), two, ("Ġ" + w for w in three))


def _added_special_tokens() -> list[str]:
    """The tokens at ids 49152..49279, in id order."""
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    reserved = [f"<|reserved_special_token_{k}|>" for k in range(88)]
    tokens = [GLOBAL_IMG, *rows, FAKE_TOKEN, IMAGE_TOKEN, *reserved, END_OF_UTTERANCE]
    assert len(tokens) == VOCAB_SIZE - BASE_VOCAB_SIZE
    return tokens


def build_tokenizer() -> Tokenizer:
    """The tokenizer with the official vocabulary size and special-token ids."""
    merges = train_bpe_merges(TRAINING_TEXT)
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(LEADING_SPECIALS)}
    for token in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[token] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    fillers = (w for w in _filler_words() if w not in vocab)
    while len(vocab) < BASE_VOCAB_SIZE:
        vocab[next(fillers)] = len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(t, special=True, normalized=False) for t in LEADING_SPECIALS]
    specials += [AddedToken(t, special=True, normalized=False) for t in _added_special_tokens()]
    tok.add_special_tokens(specials)
    _check_special_ids(tok)
    return tok


def _check_special_ids(tok: Tokenizer) -> None:
    """Fail early if an id drifted: the engine and the exported graphs rely on these."""
    expected = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, GLOBAL_IMG: 49152,
                "<row_1_col_1>": 49153, "<row_6_col_6>": 49188, FAKE_TOKEN: 49189,
                IMAGE_TOKEN: IMAGE_TOKEN_ID, "<|reserved_special_token_0|>": 49191,
                END_OF_UTTERANCE: END_OF_UTTERANCE_ID}
    for token, token_id in expected.items():
        if tok.token_to_id(token) != token_id:
            raise AssertionError(f"{token} has id {tok.token_to_id(token)}, expected {token_id}")
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise AssertionError("vocabulary size drifted")


def _tokenizer_config() -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "additional_special_tokens": [FAKE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE],
        "bos_token": "<|im_start|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": END_OF_UTTERANCE,
        "legacy": False,
        "model_max_length": MAX_POSITIONS,
        "pad_token": "<|im_end|>",
        "processor_class": "Idefics3Processor",
        "tokenizer_class": "GPT2Tokenizer",
        "truncation_side": "left",
        "unk_token": "<|endoftext|>",
        "vocab_size": BASE_VOCAB_SIZE,
    }


def _write_json(path: Path, data: Any) -> None:
    """Stable bytes: sorted keys, fixed indent, trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer_files(out_dir: Path) -> None:
    """tokenizer.json plus the small files transformers reads next to it."""
    tok = build_tokenizer()
    # Not pretty-printed: the 49k-entry vocabulary would double in size with indentation.
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=False) + "\n", encoding="utf-8")
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config())
    _write_json(out_dir / "special_tokens_map.json", {
        "additional_special_tokens": [FAKE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE],
        "bos_token": "<|im_start|>",
        "eos_token": END_OF_UTTERANCE,
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
    })
    added = {t: BASE_VOCAB_SIZE + i for i, t in enumerate(_added_special_tokens())}
    _write_json(out_dir / "added_tokens.json", added)


def write_processor_files(out_dir: Path) -> None:
    """The image processor in the flat form of the official release, plus the chat template."""
    _write_json(out_dir / "preprocessor_config.json", {
        "do_convert_rgb": True,
        "do_image_splitting": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics3ImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": TILE},
        "processor_class": "Idefics3Processor",
        "resample": 1,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": LONGEST_EDGE},
    })
    _write_json(out_dir / "processor_config.json",
                {"image_seq_len": IMAGE_SEQ_LEN, "processor_class": "Idefics3Processor"})
    _write_json(out_dir / "chat_template.json", {"chat_template": CHAT_TEMPLATE})


# --- model --------------------------------------------------------------------------------
def tiny_config_dict() -> dict[str, Any]:
    """The Idefics3 config, as keyword arguments (plain data so it is easy to read)."""
    return {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": IMAGE_TOKEN_ID,
        "scale_factor": SCALE_FACTOR,
        "tie_word_embeddings": True,
        "pad_token_id": 2,
        "vision_config": {
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": VISION_MLP,
            "num_hidden_layers": VISION_LAYERS,
            "num_attention_heads": VISION_HEADS,
            "image_size": TILE,
            "patch_size": PATCH,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
        "text_config": {
            "model_type": "llama",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": TEXT_MLP,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": TEXT_HEADS,
            "num_key_value_heads": TEXT_KV_HEADS,
            "head_dim": TEXT_HEAD_DIM,
            "hidden_act": "silu",
            "max_position_embeddings": MAX_POSITIONS,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
    }


def _init_std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) for one parameter. Larger than transformers' default 0.02 on purpose:
    with std 1 embeddings the tied LM head gives logits a spread of a few units, so greedy
    decoding has clear winners and the equivalence tests compare meaningful choices."""
    if len(shape) == 1:
        return (1.0, 0.1) if "norm" in name else (0.0, 0.1)
    if "embed_tokens" in name:
        return 0.0, 1.0
    if "position_embedding" in name:
        return 0.0, 0.5
    fan_in = 1
    for dim in shape[1:]:
        fan_in *= dim
    return 0.0, fan_in**-0.5


def _randomise(model: Any, seed: int) -> None:
    """Overwrite every parameter from one seeded generator, in name order, so the weights
    do not depend on transformers' own init code or the global RNG."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            mean, std = _init_std(name, tuple(param.shape))
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * std + mean)


def build_tiny_model(model_type: str = "idefics3") -> Any:
    """The random-weight model in eval mode (not saved).

    model_type "idefics3" (SmolVLM v1, the shipped demo) or "smolvlm" (SmolVLM2's class):
    same architecture and parameter names, so the same seed gives the same weights.
    """
    from .checkpoint import require_export_extra

    require_export_extra()
    import transformers
    from transformers import GenerationConfig

    prefixes = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}
    if model_type not in prefixes:
        raise ValueError(f"model_type must be one of {list(prefixes)}")
    config_class = getattr(transformers, f"{prefixes[model_type]}Config")
    model_class = getattr(transformers, f"{prefixes[model_type]}ForConditionalGeneration")
    kwargs = tiny_config_dict()
    kwargs["architectures"] = [model_class.__name__]
    model = model_class(config_class(**kwargs))
    _randomise(model, SEED)
    lm_head, embed = model.lm_head.weight, model.model.text_model.embed_tokens.weight
    if lm_head.data_ptr() != embed.data_ptr():
        raise AssertionError("the LM head must be tied to the token embedding")
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, END_OF_UTTERANCE_ID],
                                               pad_token_id=2)
    return model.eval()


def build_tiny_checkpoint(out_dir: Path, model_type: str = "idefics3") -> Path:
    """Write the checkpoint folder (weights, configs, tokenizer, processor) and return it.

    Identical bytes on every run with the same library versions.
    """
    from .checkpoint import quiet_progress_bars

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(model_type)
    with quiet_progress_bars():
        model.save_pretrained(out_dir)
    write_tokenizer_files(out_dir)
    write_processor_files(out_dir)
    return out_dir
