"""`smolvlm-desktop`: with no subcommand it opens the window; subcommands do the same work headless.

Exit status: 0 when everything succeeded, 4 when some inputs failed (each reported, the rest
still done), 2 for bad usage, 1 otherwise, 130 after Ctrl+C and 143 after SIGTERM (EPILOG says
it to users). Users never see a traceback for an expected failure; every error is one line
starting with "smolvlm-desktop: error: " (commands/common.py, print_error).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .commands.common import (  # noqa: F401 - re-exported: tests and scripts import them from here
    EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, PROG, Stopped, Terminated,
    UsageError, add_model_options, interrupted_status, positive_int, print_error, print_json,
)

# subcommand -> (module in commands/, function taking the parsed args); imported on use so
# that opening the window never pays for onnxruntime or the library.
COMMANDS = {
    "caption": ("caption", "run_caption"),
    "models": ("models", "run_models"),
    "search": ("semantic", "run_search"),
    "index": ("semantic", "run_index"),
    "library": ("library", "run_library"),
    "jobs": ("library", "run_jobs"),
}
# Where the global `--model` (before the command) is passed on: the window and these commands.
TAKES_MODEL = {"caption", "jobs"}

EPILOG = f"""\
examples:
  smolvlm-desktop                                    open the window
  smolvlm-desktop models pull SmolVLM-256M-Instruct  download a model (the only network use)
  smolvlm-desktop caption photo.jpg                  print a caption
  smolvlm-desktop caption photos/ --write txt        write photos/NAME.txt next to each image
  smolvlm-desktop caption a.jpg --json --prompt "What does the sign say?"
  smolvlm-desktop search "red car"                   find images by what was said about them
  smolvlm-desktop COMMAND --help                     the options of one command

exit status:
  {EXIT_OK}    everything succeeded
  {EXIT_ERROR}    an error stopped the command (said on stderr)
  {EXIT_USAGE}    bad usage: unknown option or invalid value
  {EXIT_SOME_FAILED}    some inputs failed (each said on stderr); the others were done
  {EXIT_INTERRUPTED}  interrupted by Ctrl+C (the same command resumes a batch)
  143  stopped by SIGTERM (likewise)
"""


class Parser(argparse.ArgumentParser):
    """argparse with this command's one error style: `smolvlm-desktop: error: ...`, also for
    the subcommands' parsers (argparse would say `smolvlm-desktop caption: error: ...`)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        print_error(message)
        self.exit(EXIT_USAGE)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises Terminated (the default would end the process
    on the spot, before a batch saves its aggregate files)."""
    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except (ValueError, AttributeError):  # not the main thread, or no SIGTERM (Windows)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Understand images entirely offline with SmolVLM. "
                    "Without a command, opens the window.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--demo", action="store_true",
                        help="open the window on the bundled tiny model (its answers are noise)")
    parser.add_argument("--self-test", action="store_true",
                        help="open the window offscreen, run a chat and a batch, exit 0 if all is well")
    parser.add_argument("--self-test-seconds", type=float, default=0.0, metavar="N",
                        help="with --self-test: repeat it until the app has run N seconds "
                             "(CI's privacy check)")
    parser.add_argument("--model", dest="global_model", metavar="MODEL",
                        help="model name, folder, or 'demo': for the window, or for the command "
                             "that follows (same as its own --model)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_caption_parser(sub)
    add_models_parser(sub)
    from .commands.library import add_library_parsers

    add_library_parsers(sub)
    from .commands.semantic import add_semantic_parsers

    add_semantic_parsers(sub)
    bench = sub.add_parser("bench", help="measure speed on this machine (builds a random-weight model)")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to bench/run.py")
    return parser


def package_version() -> str:
    from . import __version__

    return __version__


def _preset_choice(key: str) -> tuple[str, str]:
    from .presets import PRESETS

    if key not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {key!r}; choose from {', '.join(sorted(PRESETS))}")
    return ("preset", key)


def add_generation_options(p: argparse.ArgumentParser) -> None:
    from .presets import DEFAULT_PRESET, PRESETS

    # Both go, in the order given, into one list: each image is read once and answered once
    # per prompt (commands/caption.py).
    p.add_argument("--prompt", dest="prompts", action="append", type=lambda text: ("prompt", text), metavar="TEXT",
                   help="the question or instruction (repeatable: one answer per prompt)")
    p.add_argument("--preset", dest="prompts", action="append", type=_preset_choice,
                   metavar="{" + ",".join(sorted(PRESETS)) + "}",
                   help=f"a ready prompt (repeatable; default {DEFAULT_PRESET})")
    p.add_argument("--detail", type=int, metavar="PX",
                   help="longest edge the image is resized to (the model's own by default); "
                        "lower is faster")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="stop an answer after N tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="sample only from the likeliest tokens whose probabilities add up to P "
                        "(with --temperature > 0; default 1 = all)")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="sample only from the K likeliest tokens (with --temperature > 0; default 0 = all)")
    p.add_argument("--seed", type=int, help="random seed, so that sampling gives the same answers again")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="above 1 discourages repeating tokens already said (default 1 = off)")


def add_caption_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption or question images; prints the answers")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (or folders)")
    add_model_options(p)
    add_generation_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument("--recursive", action="store_true", help="look into sub-folders of folders given")
    add_output_options(p)
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="caption on a Ray cluster (needs --write and the 'cluster' extra), run "
                        "from one of its nodes: auto, HOST:PORT, or local for all this machine's cores")


def add_output_options(p: argparse.ArgumentParser) -> None:
    from .library.writers import FORMATS

    p.add_argument("--write", action="append", choices=FORMATS, metavar="FORMAT",
                   help=f"write captions as files (repeatable): {', '.join(FORMATS)}")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--skip-existing", dest="existing", action="store_const", const="skip",
                          help="leave images that already have a caption alone (default)")
    existing.add_argument("--overwrite", dest="existing", action="store_const", const="overwrite",
                          help="replace existing captions")
    existing.add_argument("--append", dest="existing", action="store_const", const="append",
                          help="add the new caption after the existing one")
    p.set_defaults(existing="skip")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="where metadata.jsonl / captions.csv go (default: the images' common folder)")
    p.add_argument("--embed-metadata", action="store_true",
                   help="also write the caption into the image file's own XMP (needs pyexiv2)")
    p.add_argument("--no-library", action="store_true",
                   help="do not record captions or the job in the private library")
    p.add_argument("--no-index", action="store_true",
                   help="with --write: do not embed the captioned images for search by meaning "
                        "afterwards (done when an embedding model is installed)")


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, download, import, check, remove and export models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    msub.add_parser("list", help="known models (installed or not), imported models and the demo model")
    pull = msub.add_parser(
        "pull", help="download a model from the Hugging Face Hub (the only command that uses the network)",
        description="Download a catalog model's published weights (model.safetensors, checked and resumable) "
                    "and build this app's ONNX graphs from them on this machine: faster than the official "
                    "ONNX files, with the same answers. --official downloads the official ONNX files instead "
                    "(also what a variant the app does not build, or a repo without weights, gets).")
    pull.add_argument("name", metavar="NAME", help="a model name from `models list`")
    pull.add_argument("--variant",
                      help="int8 (default, fastest on CPU) or fp32 are built here; uint8, fp16, q4, ... are "
                           "the official files. Embedding models: quantized (default, 8-bit), fp16 or fp32")
    pull.add_argument("--official", action="store_true",
                      help="download the official ONNX files of --variant instead of building the graphs")
    pull.add_argument("--accept-licence", action="store_true",
                      help="accept the licence of a model that asks first (FastVLM: apple-amlr; `models list` says which)")
    pull.add_argument("--revision", help="a Hub commit, branch or tag instead of the pinned revision")
    imp = msub.add_parser("import", help="install a SmolVLM ONNX folder copied from elsewhere, or build one "
                                         "from a transformers checkpoint folder (config.json + model.safetensors)")
    imp.add_argument("src", type=Path, metavar="DIR",
                     help="a folder with SmolVLM's ONNX files (onnx/*.onnx, config.json, tokenizer.json, ...) "
                          "or a transformers checkpoint (config.json, model.safetensors)")
    imp.add_argument("--name", help="name to install it under (default: the folder's name)")
    imp.add_argument("--move", action="store_true", help="move the folder instead of copying it")
    ver = msub.add_parser("verify", help="re-check installed files against their recorded sha256")
    ver.add_argument("name", nargs="?", metavar="NAME", help="one model (default: all installed)")
    rem = msub.add_parser("remove", help="delete an installed model (or an unfinished download)")
    rem.add_argument("name", metavar="NAME", help="an installed model (see `models list`)")
    dflt = msub.add_parser("default", help="use this model when --model is not given")
    dflt.add_argument("name", metavar="NAME", help="an installed model, or 'demo'")
    exp = msub.add_parser(
        "export", help="PyTorch SmolVLM checkpoint -> ONNX folder (needs the export extra)",
        description="Export a SmolVLM checkpoint (a save_pretrained folder) into the official ONNX layout, "
                    "checked against transformers before it is written. The graphs use ONNX Runtime's fused "
                    "ops for speed (onnxruntime 1.23 or newer runs them); int8 keeps the decoder's weights "
                    "in 8-bit blocks, so batches of images decode together with the same answers as alone.")
    exp.add_argument("src", type=Path, help="the checkpoint folder (config.json, weights, tokenizer)")
    exp.add_argument("dst", type=Path, help="the model folder to write")
    exp.add_argument("--quantize", action="append", choices=["int8", "uint8"], default=None,
                     help="also write quantised variants (repeatable; default int8; uint8 is per-tensor dynamic)")
    bld = msub.add_parser(
        "build", help="download a catalog model's PyTorch weights and export them here (needs the export extra)",
        description="Download the PyTorch weights of a catalog model (checked like a pull) and export them "
                    "on this machine with the app's own exporter, then install the result as NAME-built. "
                    "Those graphs are faster than the official ONNX files (fused ops; the decoder writes its "
                    "cache in place and decodes batches of images together) and give the same answers as "
                    "transformers. Needs the export extra (torch, transformers, onnx) and a few minutes.")
    bld.add_argument("name", metavar="NAME", help="a model from `models list`")
    bld.add_argument("--as", dest="as_name", metavar="NEW_NAME", help="install under this name (default NAME-built)")
    bld.add_argument("--revision", help="a branch, tag or commit of the Hub repo (default: the catalog's pin)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # argparse's REMAINDER rejects a leading option (`bench --threads 2`)
        from .commands.bench import run_bench

        return run_bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        if args.command is None:
            from .app import main as app_main

            return app_main(argv)
        pass_global_model(args)
        if args.command in COMMANDS:
            module_name, function = COMMANDS[args.command]
            module = importlib.import_module(f".commands.{module_name}", __package__)
            with sigterm_as_interrupt():
                return getattr(module, function)(args)
    except UsageError as exc:
        print_error(str(exc))
        return EXIT_USAGE
    except Stopped as exc:
        return exc.status
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return interrupted_status(exc)
    except Exception as exc:  # noqa: BLE001 - last line of defence: a message, not a traceback
        from .engine.types import EngineError
        from .paths import ModelNotFoundError

        if isinstance(exc, (EngineError, ModelNotFoundError, OSError)):
            print_error(str(exc))
            return EXIT_ERROR
        raise
    parser.print_help()
    return EXIT_USAGE


def pass_global_model(args: argparse.Namespace) -> None:
    """`smolvlm-desktop --model X caption ...` means `caption --model X`; said twice
    differently, or before a command that loads no model, it is refused rather than ignored."""
    if args.global_model is None:
        return
    if args.command not in TAKES_MODEL or not hasattr(args, "model"):
        raise UsageError(f"--model goes with the window, `caption` or `jobs resume`, not `{args.command}`")
    if args.model not in (None, args.global_model):
        raise UsageError(f"--model given twice ({args.global_model!r} and {args.model!r})")
    args.model = args.global_model


if __name__ == "__main__":
    sys.exit(main())
