"""Prompt presets shared by the CLI and the window, so that a caption made in one matches
a caption made in the other."""

from __future__ import annotations

PRESETS: dict[str, tuple[str, str]] = {
    # key: (label shown in the window, prompt sent to the model)
    "caption": ("Short caption", "Write a short, one-sentence caption for this image."),
    "detailed": ("Detailed description", "Describe this image in detail."),
    "ocr": ("Read the text", "Read all the text in this image. Reply with the text only."),
    "tags": (
        "Tags",
        "List comma-separated tags describing this image: subjects, setting, style, colours.",
    ),
}
DEFAULT_PRESET = "caption"


def preset_prompt(key: str, images: int = 1) -> str:
    """The prompt for a preset; a clear KeyError naming the valid keys otherwise. With several
    images in one question it speaks of "these N images", not "this image"."""
    try:
        prompt = PRESETS[key][1]
    except KeyError:
        raise KeyError(f"unknown preset {key!r}; choose one of {', '.join(PRESETS)}") from None
    return prompt.replace("this image", f"these {images} images") if images > 1 else prompt
