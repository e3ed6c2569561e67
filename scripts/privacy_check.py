#!/usr/bin/env python3
"""Prove that a long run of the app opens no internet socket and writes nowhere it should not.

    python scripts/privacy_check.py batch                 # `caption` on a folder, looped >= 25 s
    python scripts/privacy_check.py window                # the window's --self-test, >= 25 s
    python scripts/privacy_check.py window --app /usr/bin/smolvlm-desktop   # an installed app

Why long: ONNX Runtime's telemetry woke about 9 s into a run (it resolved its collector's host
and kept a database in ~/.cache/Microsoft/), so a one-image run proved nothing. Each run here
lasts at least --seconds (the work is repeated until then), under `strace -f`, with a fresh
HOME and XDG folders. It fails on:

- any AF_INET or AF_INET6 socket or connect, by any thread or child process;
- any file or folder created outside the output folder and the app's own data, cache and
  config folders (and, for the window, the temporary folder its self-test makes its images
  in), anywhere on the machine, even one deleted again before the end.

Exit status 0 when clean, 1 with the offending lines, 2 when it could not check (no strace).
Python's own bytecode caches are switched off (PYTHONDONTWRITEBYTECODE): they are the
interpreter's, not the app's, and a frozen app has none.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

APP_ID = "smolvlm-desktop"  # the app's folder name under each XDG root (paths.py)
TRACED = ("socket,connect,open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,"
          "link,linkat,symlink,symlinkat")
# The driver for `batch`: the real CLI, in one process, captioning the whole folder again
# (--overwrite) until the deadline, so the process lives as long as a real long batch.
BATCH_DRIVER = """
import sys, time
from smolvlm_desktop.cli import main
images, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
start, rounds = time.monotonic(), 0
while True:
    code = main(["caption", images, "--model", "demo", "--write", "txt", "--write", "jsonl",
                 "--write", "csv", "--output-dir", out, "--overwrite", "--max-new-tokens", "16"])
    rounds += 1
    if code != 0:
        sys.exit(code)
    if time.monotonic() - start >= seconds:
        break
print(f"batch driver: {rounds} rounds in {time.monotonic() - start:.1f} s", file=sys.stderr)
"""


@dataclass
class Sandbox:
    """A fresh HOME, XDG folders, working folder and output folder, all under one root."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def xdg(self, kind: str) -> Path:
        return self.home / {"config": ".config", "cache": ".cache", "data": ".local/share",
                            "state": ".local/state", "runtime": "runtime"}[kind]

    def make(self) -> None:
        for folder in (self.home, self.cwd, self.out, self.tmp,
                       *(self.xdg(k) for k in ("config", "cache", "data", "state", "runtime"))):
            folder.mkdir(parents=True, exist_ok=True)
        self.xdg("runtime").chmod(0o700)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SMOLVLM_", "XDG_", "ORT_"))}  # the app must set its own
        env.update(HOME=str(self.home), TMPDIR=str(self.tmp), PYTHONDONTWRITEBYTECODE="1",
                   XDG_CONFIG_HOME=str(self.xdg("config")), XDG_CACHE_HOME=str(self.xdg("cache")),
                   XDG_DATA_HOME=str(self.xdg("data")), XDG_STATE_HOME=str(self.xdg("state")),
                   XDG_RUNTIME_DIR=str(self.xdg("runtime")), QT_QPA_PLATFORM="offscreen")
        return env

    def app_folders(self) -> list[Path]:
        return [self.xdg(kind) / APP_ID for kind in ("config", "cache", "data")]


# --- reading strace's log ------------------------------------------------------------------

_CALL = re.compile(r"^(?:\[?(?:pid\s+)?\d+\]?\s+)?(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")
_DIRFD = re.compile(r"^(?:AT_FDCWD|-?\d+)(?:<(?P<dir>[^>]*)>)?$")
# Where each call names the path it creates: (directory fd field or None, path field).
_CREATES = {"open": (None, 0), "creat": (None, 0), "mkdir": (None, 0), "openat": (0, 1),
            "openat2": (0, 1), "mkdirat": (0, 1), "rename": (None, 1), "link": (None, 1),
            "symlink": (None, 1), "renameat": (2, 3), "renameat2": (2, 3), "linkat": (2, 3),
            "symlinkat": (1, 2)}


def _fields(args: str) -> list[str]:
    """Split a call's arguments at the commas that are outside quotes and brackets."""
    fields, depth, quoted, current = [], 0, False, []
    i = 0
    while i < len(args):
        ch = args[i]
        if quoted and ch == "\\":
            current.append(args[i:i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "{[(<":
            depth += 1
        elif not quoted and ch in "}])>":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            fields.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    fields.append("".join(current).strip())
    return fields


def _unquote(field: str) -> str | None:
    """A quoted strace string as a file name (strace escapes non-printable bytes as \\xNN)."""
    if not (field.startswith('"') and field.rstrip(".").endswith('"')):
        return None
    raw = field.rstrip(".")[1:-1]
    return raw.encode("latin-1", "backslashreplace").decode("unicode_escape").encode(
        "latin-1").decode("utf-8", "surrogateescape")


def created_paths(line: str, cwd: Path) -> list[Path]:
    """The path a successful call in one strace line creates (or may create: O_CREAT)."""
    call = _CALL.match(line)
    if not call or int(call["ret"]) < 0 or call["name"] not in _CREATES:
        return []
    name, fields = call["name"], _fields(call["args"])
    if name.startswith("open") and "O_CREAT" not in call["args"]:
        return []
    dir_field, path_field = _CREATES[name]
    path = _unquote(fields[path_field]) if path_field < len(fields) else None
    if path is None:
        return []
    if path.startswith("/"):
        return [Path(path)]
    dirfd = _DIRFD.match(fields[dir_field]) if dir_field is not None else None
    base = Path(dirfd["dir"]) if dirfd and dirfd["dir"] else cwd
    return [base / path]


_INTERNET = re.compile(r"\b(?:socket\((?:AF|PF)_INET6?\b|connect\(.*sa_family=AF_INET6?\b)")


def is_internet(line: str) -> bool:
    """An internet socket or connect, attempted: whatever it returned."""
    return _INTERNET.search(line) is not None


def violations(log: str, cwd: Path, allowed: list[Path]) -> list[str]:
    """Every line of one process's log that breaks the promise, with what it broke."""
    found = []
    roots = [Path(os.path.realpath(p)) for p in allowed]
    for line in log.splitlines():
        if is_internet(line):
            found.append(f"internet socket: {line.strip()}")
            continue
        for path in created_paths(line, cwd):
            real = Path(os.path.realpath(path))
            if str(real).startswith("/dev/") or any(real == r or r in real.parents for r in roots):
                continue
            found.append(f"created outside the app's folders: {path}")
    return found


# --- running one check -------------------------------------------------------------------

def make_images(folder: Path, count: int) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (96 + i % 7 * 8, 72), (i * 37 % 256, 90, 160))
        ImageDraw.Draw(image).ellipse((10, 10, 60, 60), fill=(240, 240, 240))
        image.save(folder / f"photo-{i:03d}.png")


def command_for(mode: str, box: Sandbox, app: list[str], seconds: float) -> list[str]:
    if mode == "batch":
        images = box.out / "images"
        make_images(images, 24)
        return [sys.executable, "-c", BATCH_DRIVER, str(images), str(box.out), str(seconds)]
    return [*app, "--self-test", "--self-test-seconds", str(seconds)]


def run_check(mode: str, app: list[str], seconds: float, keep: bool = False) -> int:
    strace = shutil.which("strace")
    if strace is None:
        print("privacy check: strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2
    box = Sandbox(Path(tempfile.mkdtemp(prefix="smolvlm-privacy-")))
    box.make()
    logs = box.root / "strace"  # -ff: one log per process, so no call is split across lines
    command = command_for(mode, box, app, seconds)
    started = time.monotonic()
    done = subprocess.run([strace, "-f", "-ff", "-qq", "-y", "-s", "4096",
                           "-e", f"trace={TRACED}", "-o", str(logs), "--", *command],
                          cwd=box.cwd, env=box.env(), capture_output=True, text=True)
    elapsed = time.monotonic() - started
    allowed = [box.out, *box.app_folders()]
    if mode == "window":
        allowed.append(box.tmp)  # the self-test's own images, in a TemporaryDirectory
    problems = sorted({p for log in box.root.glob("strace.*")
                       for p in violations(log.read_text(errors="replace"), box.cwd, allowed)})
    problems.sort(key=lambda p: not p.startswith("internet"))
    if done.returncode != 0:
        problems.append(f"the app exited {done.returncode}:\n{done.stderr[-3000:]}")
    if elapsed < seconds:
        problems.append(f"the run lasted {elapsed:.1f} s, less than the {seconds:.0f} s asked for")
    label = f"privacy check ({mode}, {' '.join(command[:1] if mode == 'batch' else app)})"
    if not keep:
        shutil.rmtree(box.root, ignore_errors=True)
    if problems:
        print(f"{label}: FAILED after {elapsed:.1f} s", file=sys.stderr)
        for problem in problems[:50]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{label}: passed: {elapsed:.1f} s under strace -f, no internet socket, "
          f"nothing created outside the output and the app's own folders")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("batch", "window"))
    parser.add_argument("--seconds", type=float, default=25.0,
                        help="how long the run must last at least (default 25: telemetry "
                             "woke after ~9 s)")
    parser.add_argument("--app", default=None,
                        help="the app to run for `window` (default: this Python's "
                             "`-m smolvlm_desktop`); e.g. an installed /usr/bin/smolvlm-desktop")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox and strace log")
    args = parser.parse_args(argv)
    app = [args.app] if args.app else [sys.executable, "-m", "smolvlm_desktop"]
    return run_check(args.mode, app, args.seconds, args.keep)


if __name__ == "__main__":
    sys.exit(main())
