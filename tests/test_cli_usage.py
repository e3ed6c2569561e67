"""The command line as a person meets it: help, the one error style, the global --model, no
display, and a progress bar that leaves the results readable."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from smolvlm_desktop.cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def write_photo(path: Path, shade: int = 90) -> Path:
    Image.new("RGB", (64, 48), (shade, 120, 200)).save(path)
    return path


def all_parsers(parser: argparse.ArgumentParser, name: str = "smolvlm-desktop"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from all_parsers(sub, f"{name} {sub_name}")


def test_every_option_and_argument_has_help() -> None:
    missing = [f"{name}: {'/'.join(action.option_strings) or action.dest}"
               for name, parser in all_parsers(build_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert not missing, missing


def test_help_ends_with_examples_and_exit_codes(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "examples:" in out and "smolvlm-desktop caption" in out
    for code in (EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED, 130):
        assert re.search(rf"^\s+{code}\s+\S", out, re.M), f"exit code {code} not explained"


def test_search_limit_must_be_positive(capsys: pytest.CaptureFixture) -> None:
    assert main(["search", "cat", "--limit", "-1"]) == EXIT_USAGE
    assert "--limit" in capsys.readouterr().err


def test_global_model_is_passed_to_the_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = write_photo(tmp_path / "x.jpg")
    assert main(["--model", "demo", "caption", str(image), "--max-new-tokens", "3", "--threads", "1"]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.out.strip() and "--model demo" not in captured.err


def test_global_model_that_contradicts_the_commands_is_refused(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    image = write_photo(tmp_path / "x.jpg")
    assert main(["--model", "demo", "caption", str(image), "--model", "other"]) == EXIT_USAGE
    assert main(["--model", "demo", "models", "list"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("smolvlm-desktop: error: ") == 2 and "models" in err


def test_errors_have_one_prefix_and_name_the_file_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "img").mkdir()
    broken = tmp_path / "img" / "broken.jpg"
    broken.write_text("not a photo")
    ok = write_photo(tmp_path / "img" / "ok.jpg")
    code = main(["caption", str(ok), str(broken), str(tmp_path / "missing.jpg"), "--model", "demo",
                 "--max-new-tokens", "3", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == EXIT_SOME_FAILED
    errors = captured.err.splitlines()
    assert [line for line in errors if "broken" in line] == [f"smolvlm-desktop: error: {broken}: not an image "
                                                             "(or not a supported format)"]
    assert [line for line in errors if "missing" in line] == [
        f"smolvlm-desktop: error: {tmp_path / 'missing.jpg'}: file not found"]
    assert captured.out.startswith(f"{ok}: ")


def test_one_good_image_among_missing_ones_is_printed_with_its_path(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    ok = write_photo(tmp_path / "ok.jpg")
    code = main(["caption", str(ok), str(tmp_path / "missing.jpg"), "--model", "demo",
                 "--max-new-tokens", "3", "--threads", "1"])
    assert code == EXIT_SOME_FAILED
    out = capsys.readouterr().out
    assert out.startswith(f"{ok}: ") and out.count("\n") == 1


def test_usage_errors_use_the_same_prefix(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["caption", str(tmp_path / "x.jpg"), "--embed-metadata", "--model", "demo"]) == EXIT_USAGE
    assert capsys.readouterr().err == "smolvlm-desktop: error: --embed-metadata goes with --write\n"


def test_no_display_is_one_line_saying_how_to_run_headless(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Without this, Qt's xcb plugin aborts the process (SIGABRT) with a page of text."""
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["--demo"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smolvlm-desktop: error: no display")
    assert "QT_QPA_PLATFORM=offscreen" in err and "caption" in err


def read_terminal(master: int) -> bytes:
    """All a child wrote to the pseudo-terminal `master` until it closed it; closes `master`."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks)


def render_terminal(data: bytes) -> list[str]:
    """What a terminal shows for `data`: carriage returns, newlines, cursor-up and erase-line
    honoured, colours ignored. Enough to see one line written over another."""
    screen, row, col = [""], 0, 0
    for token in re.findall(rb"\x1b\[[0-9;]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", data):
        if token == b"\r":
            col = 0
        elif token == b"\n":
            row += 1
            if row == len(screen):
                screen.append("")
        elif token.startswith(b"\x1b["):
            if token.endswith(b"A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token.endswith(b"K"):
                screen[row] = screen[row][:col]
        else:
            text = token.decode("utf-8", "replace")
            line = screen[row].ljust(col)
            screen[row] = line[:col] + text + line[col + len(text):]
            col += len(text)
    return [line.rstrip() for line in screen]


@pytest.mark.slow
def test_progress_on_a_terminal_leaves_each_result_on_its_own_line(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    images = [write_photo(tmp_path / f"p{i:03}.jpg", 40 * i) for i in range(3)]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SMOLVLM_DATA_DIR": str(tmp_path / "d"),
           "SMOLVLM_CONFIG_DIR": str(tmp_path / "c"), "SMOLVLM_CACHE_DIR": str(tmp_path / "k")}
    child = subprocess.Popen([sys.executable, "-m", "smolvlm_desktop", "caption", *map(str, images),
                              "--model", "demo", "--write", "txt", "--max-new-tokens", "3", "--threads", "1"],
                             stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    output = read_terminal(master)
    assert child.wait(timeout=120) == EXIT_OK, output.decode(errors="replace")
    shown = render_terminal(output)
    results = [line for line in shown if ".jpg: " in line]
    assert [line.split(": ", 1)[0] for line in results] == [str(p) for p in images], shown
    assert any(re.search(r"3/3", line) for line in shown), shown


def test_bench_finds_the_checkout_it_is_run_from_after_a_plain_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`pip install .` (the README's set-up) puts the package in site-packages, away from
    bench/; run from inside the checkout, the command finds bench/ there."""
    from smolvlm_desktop.commands import bench

    monkeypatch.setattr(bench, "SOURCE_ROOT", tmp_path / "site-packages")  # stands in for the installed copy
    monkeypatch.chdir(ROOT / "smolvlm_desktop" / "engine")
    assert bench.source_tree() == ROOT
    monkeypatch.chdir(tmp_path)
    assert bench.source_tree() is None


def test_bench_outside_a_checkout_says_exactly_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    from smolvlm_desktop.commands import bench

    monkeypatch.setattr(bench, "SOURCE_ROOT", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smolvlm-desktop: error: ") and err.count("\n") == 1
    assert "git clone" in err and "scripts/setup.sh --dev" in err and ".venv/bin/smolvlm-desktop bench" in err


def test_bench_without_the_export_extra_says_exactly_what_to_run_simulated_missing_torch(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The README's plain set-up has no torch; `sys.modules[...] = None` makes its import fail here."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.chdir(ROOT)
    assert main(["bench", "--quick"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smolvlm-desktop: error: ") and "torch" in err
    assert "./scripts/setup.sh --dev" in err and ".venv/bin/smolvlm-desktop bench" in err
