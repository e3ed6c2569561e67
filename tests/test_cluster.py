"""`caption --cluster`: the same batch on a real two-node Ray cluster, on the loopback only.

The tests start real clusters (tests/ray_cluster.py: two `ray start` nodes of one CPU each
on 127.0.0.1, usage statistics off, no dashboard; one shared by the tests that keep it whole)
and run the real command in a child process, as a user would. Slow (a cluster takes ~10 s
to start): `-m "not cluster"` skips them. Addresses where nothing answers are loopback ports
nothing listens on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import pytest

from smolvlm_desktop.cli import EXIT_USAGE, main
from smolvlm_desktop.cluster import has_model, model_listing
from smolvlm_desktop.paths import library_path
from ray_cluster import MARKER, LoopbackCluster, free_port, hiding_prefix, marked_processes, ray_env
from test_batch import make_images
from test_cli_usage import read_terminal

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
N_IMAGES = 40
KILL_AFTER = 8  # results received before the worker node is killed


HIDING = sys.platform.startswith("linux") and bool(hiding_prefix())


def started_cluster(hidden: list[Path]):  # type: ignore[no-untyped-def]
    pytest.importorskip("ray", reason="the 'cluster' extra is not installed")
    started = LoopbackCluster(workers=1, hidden=hidden)
    try:
        yield started
    finally:
        started.stop()
    assert not started.pids(), "a Ray process of the test cluster outlived it"


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """Shared by the tests that keep it whole. Its worker node does not see the model folder
    where a mount namespace can hide it (HIDING), as a machine without a copy of the model."""
    yield from started_cluster([tiny_model_dir] if HIDING else [])


@pytest.fixture
def doomed_cluster():  # type: ignore[no-untyped-def]
    """Its own, for the test that kills a node; every node sees the model folder."""
    yield from started_cluster([])


def caption_command(tiny_model_dir: Path, folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "smolvlm_desktop", "caption", str(folder), "--model",
            str(tiny_model_dir), "--variant", "fp32", "--threads", "1", "--max-new-tokens", "8",
            "--write", "txt", "--write", "jsonl", "--json", *extra]


def answers(stdout: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in stdout.splitlines()]
    counts = Counter(row["path"] for row in rows)
    assert set(counts.values()) == {1}, f"images reported more than once: {counts.most_common(3)}"
    return {Path(row["path"]).name: row for row in rows}


def written(folder: Path) -> dict[str, str]:
    """Each image's caption in metadata.jsonl (each image once) and in its .txt."""
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    names = Counter(row["file_name"] for row in rows)
    assert set(names.values()) == {1}, f"rows written more than once: {names.most_common(3)}"
    texts = {row["file_name"]: row["text"] for row in rows}
    for name, text in texts.items():
        assert (folder / name).with_suffix(".txt").read_text(encoding="utf-8") == text
    return texts


@pytest.fixture(scope="module")
def one_machine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """What a local run (no --cluster) answers and writes for the N_IMAGES test images:
    each image's (text, token ids), and each caption written."""
    folder = tmp_path_factory.mktemp("one-machine") / "photos"
    make_images(folder, N_IMAGES)
    local = subprocess.run(caption_command(tiny_model_dir, folder), env=ray_env(),
                           capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr
    texts = {n: (r["text"], r["token_ids"]) for n, r in answers(local.stdout).items()}
    assert len(texts) == N_IMAGES
    return texts, written(folder)


def assert_like_one_machine(stdout: str, folder: Path, one_machine) -> None:  # type: ignore[no-untyped-def]
    texts, files = one_machine
    assert {n: (r["text"], r["token_ids"]) for n, r in answers(stdout).items()} == texts
    assert written(folder) == files


def test_a_two_node_cluster_captions_like_one_machine(cluster: LoopbackCluster, tiny_model_dir: Path,
                                                      tmp_path: Path, one_machine) -> None:  # type: ignore[no-untyped-def]
    """Relative paths too: the workers' working folder is not the command's."""
    make_images(tmp_path / "photos", N_IMAGES)
    remote = subprocess.run(caption_command(tiny_model_dir, Path("photos"), "--cluster", cluster.address),
                            env=ray_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    assert_like_one_machine(remote.stdout, tmp_path / "photos", one_machine)


@pytest.mark.skipif(not HIDING, reason="needs a mount namespace (unshare) to hide the model from a node")
def test_a_node_without_the_model_folder_gets_its_files_through_the_object_store(
        cluster: LoopbackCluster, tiny_model_dir: Path, tmp_path: Path, one_machine) -> None:  # type: ignore[no-untyped-def]
    """The worker node runs where the model folder is an empty tmpfs (its own mount
    namespace), as a machine without a copy of it: its actor fetches the files from the
    driver's node through Ray's object store, unpacked in that node's temp dir, and says so
    once; the captions are the same."""
    folder = tmp_path / "photos"
    make_images(folder, N_IMAGES)
    remote = subprocess.run(caption_command(tiny_model_dir, folder, "--cluster", cluster.address),
                            env=ray_env(), capture_output=True, text=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    assert "has no copy of the model folder: its files came through Ray's object store" in remote.stderr
    unpacked = list((cluster.worker_tmp / "smolvlm-cluster-models").glob("*"))
    assert len(unpacked) == 1 and has_model(unpacked[0], model_listing(tiny_model_dir, "fp32"))
    assert_like_one_machine(remote.stdout, folder, one_machine)


def run_until(command: list[str], results: int, action) -> tuple[int, list[str], str]:  # type: ignore[no-untyped-def]
    """Run the command; `action(child)` once the first `results` answers are out (a count of
    results, not a sleep, so the test does not depend on timing)."""
    with subprocess.Popen(command, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None and child.stderr is not None
        lines = []
        for line in child.stdout:
            lines.append(line)
            if len(lines) == results:
                action(child)
        stderr = child.stderr.read()
        return child.wait(timeout=120), lines, stderr


def test_a_node_killed_mid_job_loses_nothing_and_writes_nothing_twice(
        doomed_cluster: LoopbackCluster, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_images(folder, N_IMAGES)
    command = caption_command(tiny_model_dir, folder, "--cluster", doomed_cluster.address)
    rc, lines, stderr = run_until(command, KILL_AFTER, lambda child: doomed_cluster.kill_worker_node())
    assert rc == 0, stderr
    assert "has no copy of the model folder" not in stderr  # every node sees it here
    assert len(lines) > KILL_AFTER, "the job ended before the node was killed"
    assert len(answers("".join(lines))) == N_IMAGES
    assert len(written(folder)) == N_IMAGES


def test_ctrl_c_stops_a_cluster_batch_and_the_same_command_finishes_it(
        cluster: LoopbackCluster, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_images(folder, N_IMAGES)
    command = caption_command(tiny_model_dir, folder, "--cluster", cluster.address)
    rc, first, stderr = run_until(command, KILL_AFTER, lambda child: child.send_signal(signal.SIGINT))
    assert rc == 130 and len(first) < N_IMAGES, stderr
    again = subprocess.run(command, env=ray_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resuming job" in again.stderr
    answers("".join(first) + again.stdout)  # no image reported twice over both runs
    assert len(written(folder)) == N_IMAGES


# Fault injection for a loaded machine, in the driver only (its sitecustomize): Ray Data's
# executor thread takes 3 s to end once its loop is done, longer than the 2 s its shutdown
# waits for it. Were Ray shut down under such a thread, Ray could end the process with exit 1
# ("The core worker has already been shutdown"), as CI once saw; the spy on ray.shutdown says
# which executor threads were still alive when it was called.
SLOW_EXECUTOR = """
import sys, threading, time
import ray
from ray.data._internal.execution import streaming_executor as se

real_run = se.StreamingExecutor.run

def run_slow_to_end(self):
    real_run(self)
    time.sleep(3)

real_shutdown = ray.shutdown

def spied_shutdown(*args, **kwargs):
    alive = [t.name for t in threading.enumerate() if t.name.startswith("StreamingExecutor")]
    print(f"executor threads alive at ray.shutdown: {alive}", file=sys.stderr, flush=True)
    return real_shutdown(*args, **kwargs)

se.StreamingExecutor.run = run_slow_to_end
ray.shutdown = spied_shutdown
"""


def test_ctrl_c_on_a_loaded_machine_lets_ray_data_stop_before_ray_shuts_down(
        cluster: LoopbackCluster, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection (a loaded machine cannot be summoned on cue): see SLOW_EXECUTOR."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SLOW_EXECUTOR)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])))
    folder = tmp_path / "photos"
    make_images(folder, N_IMAGES)
    command = caption_command(tiny_model_dir, folder, "--cluster", cluster.address)
    rc, first, stderr = run_until(command, KILL_AFTER, lambda child: child.send_signal(signal.SIGINT))
    assert "executor threads alive at ray.shutdown: []" in stderr, stderr
    assert rc == 130 and "interrupted: run the same command again to resume" in stderr, stderr
    assert len(answers("".join(first))) <= len(written(folder)) < N_IMAGES


def usage_error(command: list[str], env: dict[str, str], folder: Path) -> str:
    """Run a command that must fail as a usage error having written nothing: its one line.

    The timeout is the check that it fails quickly: Ray's own joining retries for minutes."""
    before = sorted(folder.iterdir())
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(folder.iterdir()) == before, "a caption file was written"
    assert not library_path().exists(), "the library was opened (a job recorded)"
    return done.stderr.strip()


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port where a connection is never answered, as behind a firewall that
    drops packets: a listening socket whose queue (of one, with a backlog of 0) is held full
    by a connection never accepted, so the kernel ignores the next one's SYN."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler.connect(server.getsockname())
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("where", ["port 1", "a closed port", "auto from RAY_ADDRESS",
                                   pytest.param("a silent port", marks=pytest.mark.loopback)])
def test_an_address_where_no_cluster_answers_is_a_quick_usage_error_writing_nothing(
        where: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the 'cluster' extra is not installed")
    images = tmp_path / "photos"
    make_images(images, 2)
    env, address = ray_env(), {"port 1": "127.0.0.1:1"}.get(where, f"127.0.0.1:{free_port()}")
    if where == "auto from RAY_ADDRESS":
        env["RAY_ADDRESS"], address = address, "auto"
    with silent_port() if where == "a silent port" else nullcontext(0) as port:
        if port:
            address = f"127.0.0.1:{port}"
        line = usage_error(caption_command(tiny_model_dir, images, "--cluster", address), env, images)
    assert line.startswith("smolvlm-desktop: error: no Ray cluster answers at ")
    assert line.endswith(": no answer within 5 s" if port else ": connection refused")


@pytest.mark.parametrize("given", ["ray://", "auto with RAY_ADDRESS=ray://"])
def test_a_ray_client_address_is_refused_in_one_line_naming_the_way_that_works(
        given: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Ray Data does not run through Ray Client (ray-project/ray#42739): refused before any
    connection (the port here has nothing behind it, and is never tried)."""
    pytest.importorskip("ray", reason="the 'cluster' extra is not installed")
    images = tmp_path / "photos"
    make_images(images, 2)
    env, address = ray_env(), f"ray://127.0.0.1:{free_port()}"
    if given.startswith("auto"):
        env["RAY_ADDRESS"], address = address, "auto"
    line = usage_error(caption_command(tiny_model_dir, images, "--cluster", address), env, images)
    assert line.startswith(f"smolvlm-desktop: error: --cluster {address}: Ray Data")
    assert "Ray Client" in line and "--cluster auto" in line


@pytest.mark.skipif(os.name == "nt", reason="pseudo-terminals are POSIX")
def test_a_cluster_batch_in_a_terminal_shows_a_progress_bar_with_the_rate(
        cluster: LoopbackCluster, tiny_model_dir: Path, tmp_path: Path) -> None:
    """stderr on a real pseudo-terminal, as a person running the command sees it (100
    columns: tqdm draws nothing on a terminal of none, which a new one has)."""
    import fcntl
    import pty
    import struct
    import termios

    folder = tmp_path / "photos"
    make_images(folder, 8)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    command = [c for c in caption_command(tiny_model_dir, folder, "--cluster", cluster.address) if c != "--json"]
    child = subprocess.Popen(command, env={**ray_env(), "TERM": "xterm"}, stdout=subprocess.PIPE,
                             stderr=slave)
    os.close(slave)
    shown = read_terminal(master)
    child.communicate(timeout=120)
    screen = shown.decode("utf-8", "replace")
    assert child.returncode == 0, screen
    bars = [line for line in screen.replace("\r", "\n").splitlines() if line[:1].isdigit() and "/" in line]
    assert bars, screen  # (Ray's own lines may come after it: ray-project/ray#57733)
    assert bars[-1].startswith("8/8 ") and ("images/s" in bars[-1] or "s/image" in bars[-1]), screen
    assert len(written(folder)) == 8


def test_cluster_without_ray_installed_is_a_one_line_usage_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        tiny_model_dir: Path) -> None:
    """Ray *is* installed here; `import ray` is made to fail as where it is not."""
    monkeypatch.setitem(sys.modules, "ray", None)
    image = make_images(tmp_path, 1)[0]
    rc = main(["caption", str(image), "--model", str(tiny_model_dir), "--write", "txt",
               "--cluster", "local"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert err.strip().splitlines() == ["smolvlm-desktop: error: --cluster needs Ray: pip install "
                                        "'smolvlm-desktop[cluster]'"]
    assert not image.with_suffix(".txt").exists()


def test_a_local_cluster_captions_and_leaves_no_ray_token_in_the_home_folder(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--cluster local`: Ray's own single-machine cluster, on 127.0.0.1 (no address given
    to point anywhere, and RAY_ADDRESS, here a dead one, is not a way to give one), with the
    token of this run kept in the environment."""
    pytest.importorskip("ray", reason="the 'cluster' extra is not installed")
    folder, home = tmp_path / "photos", tmp_path / "home"
    make_images(folder, 4)
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="smr", dir="/tmp")  # short: Ray's socket paths
    env = {**ray_env(), "HOME": str(home), "RAY_TMPDIR": ray_tmp,
           "RAY_ADDRESS": f"127.0.0.1:{free_port()}", MARKER: ray_tmp}
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name)  # the app sets them itself for a local cluster
    try:
        done = subprocess.run(caption_command(tiny_model_dir, folder, "--cluster", "local"),
                              env=env, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert len(written(folder)) == 4
    assert not (home / ".ray").exists()
    # Ray's workers end on their own once their raylet is gone, a moment after the command
    deadline = time.monotonic() + 30
    while marked_processes(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not marked_processes(ray_tmp), "a process of the command's Ray cluster outlived it"
