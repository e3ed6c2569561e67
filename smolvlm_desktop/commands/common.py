"""What every subcommand and `cli.py` share: exit codes, the usage error, how messages and
JSON lines are printed, and the model options several commands take.

It lives here, below both `cli.py` and the command modules, so that neither imports the other
for these (a command importing `cli` while `cli` imports the command is a cycle).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

PROG = "smolvlm-desktop"

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl+C (143: SIGTERM)


class UsageError(Exception):
    """Bad arguments that argparse could not catch; exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a logout), raised in the main thread like Ctrl+C's KeyboardInterrupt,
    so that the same clean-up runs: a batch saves metadata.jsonl / captions.csv."""


class Stopped(Exception):
    """The command was interrupted and has said so (with how to go on); exit with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process that a signal ended."""
    return 128 + int(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl+C or SIGTERM that `exc` is, or that was being handled when `exc` was raised
    (its __context__ chain): clean-up that fails while a command stops (Ray shutting down
    mid-call) is part of the stop, not an error of its own. None if no interrupt is behind it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__context__
    return None


def print_error(message: str) -> None:
    """One line on stderr with the one prefix every error of this command has (argparse's own
    style), so a script or a person can tell our errors from anything else on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def json_line(obj: dict) -> str:
    """An --json output line: one object, non-ASCII text kept readable."""
    return json.dumps(obj, ensure_ascii=False)


def print_json(obj: dict) -> None:
    """One JSON object per line on stdout, flushed so a pipe sees each result as it comes."""
    print(json_line(obj), flush=True)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model/--variant/--provider/--threads, for every command that loads a model."""
    p.add_argument("--model", help="installed model name, model folder, or 'demo'")
    p.add_argument("--variant", help="ONNX variant: int8 (default on CPU), uint8, fp32, fp16, ...")
    p.add_argument("--provider", default="auto", help="auto|cpu|dml|coreml|cuda (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a count, a limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
