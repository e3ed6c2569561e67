"""`smolvlm-desktop models …`: the models on this machine."""

from __future__ import annotations

import argparse

from ..cli import EXIT_OK
from ..paths import default_model_name, demo_model_dir, installed_models


def run_models(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        return list_models()
    if args.models_command == "export":
        from ..export import export_checkpoint

        export_checkpoint(args.src, args.dst, quantize=tuple(args.quantize or ["int8"]))
        print(f"exported to {args.dst}")
        return EXIT_OK
    raise AssertionError(args.models_command)


def list_models() -> int:
    default = default_model_name()
    for folder in installed_models():
        mark = "*" if folder.name == default else " "
        print(f"{mark} {folder.name}\t{folder}")
    print(f"  demo\t{demo_model_dir()}  (bundled; random weights, answers are noise)")
    return EXIT_OK
