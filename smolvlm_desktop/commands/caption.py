"""`smolvlm-desktop caption PATH...`: answer one prompt about each image, headless."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, UsageError, print_json
from ..engine.images import load_image
from ..engine.model import VisionLanguageModel
from ..engine.types import EngineError, GenerationSettings, Message
from ..paths import resolve_model
from ..presets import DEFAULT_PRESET, preset_prompt


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    try:
        return GenerationSettings(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, seed=args.seed, repetition_penalty=args.repetition_penalty,
            detail=args.detail,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def prompt_text(args: argparse.Namespace) -> str:
    return args.prompt if args.prompt is not None else preset_prompt(args.preset or DEFAULT_PRESET)


def load_model(args: argparse.Namespace) -> VisionLanguageModel:
    folder = resolve_model(args.model)
    model = VisionLanguageModel.load(folder, variant=args.variant, provider=args.provider,
                                     threads=args.threads)
    for graph, reason in model.fallback_notes.items():
        print(f"note: {graph} runs on the CPU ({reason})", file=sys.stderr)
    return model


def expand_paths(args: argparse.Namespace) -> tuple[list[Path], list[tuple[Path, str]]]:
    from ..library.discover import discover_images

    return discover_images([Path(p) for p in args.paths], recursive=args.recursive)


def run_caption(args: argparse.Namespace) -> int:
    settings = generation_settings(args)
    prompt = prompt_text(args)
    images, problems = expand_paths(args)
    model = load_model(args)
    failed = 0
    for path, reason in problems:
        failed += 1
        report_failure(args, model, path, reason)
    for path in images:
        ok = caption_one(args, model, path, prompt, settings, many=len(images) > 1)
        failed += 0 if ok else 1
    if failed:
        return EXIT_SOME_FAILED
    return EXIT_OK if images else EXIT_ERROR


def caption_one(args: argparse.Namespace, model: VisionLanguageModel, path: Path, prompt: str,
                settings: GenerationSettings, many: bool) -> bool:
    try:
        loaded = load_image(path)
        messages = [Message("user", prompt, images=(loaded.image,))]
        if args.json:
            result = model.generate(messages, settings)
        else:
            if many:
                print(f"{path}: ", end="", flush=True)
            generation = model.stream(messages, settings)
            for event in generation:
                print(event.text, end="", flush=True)
            print(flush=True)
            result = generation.result
    except EngineError as exc:
        report_failure(args, model, path, str(exc))
        return False
    for note in loaded.notes:
        print(f"note: {path}: {note}", file=sys.stderr)
    if args.json:
        print_json(record(model, path, ok=True, text=result.text, token_ids=result.token_ids,
                          timings=result.timings.as_dict()))
    return True


def report_failure(args: argparse.Namespace, model: VisionLanguageModel, path: Path, reason: str) -> None:
    if args.json:
        print_json(record(model, path, ok=False, error=reason))
    else:
        print(f"error: {path}: {reason}", file=sys.stderr)


def record(model: VisionLanguageModel, path: Path, *, ok: bool, text: str | None = None,
           token_ids: list[int] | None = None, error: str | None = None,
           timings: dict | None = None) -> dict:
    """The --json line: the same keys for successes and failures."""
    return {
        "path": str(path), "ok": ok, "text": text, "token_ids": token_ids, "error": error,
        "model": model.info.name, "variant": model.info.variant,
        "providers": model.info.providers, "timings": timings,
    }
