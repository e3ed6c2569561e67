"""`caption --cluster`: the same batch on a real two-node Ray cluster, on the loopback only.

Each test starts its own cluster (tests/ray_cluster.py: two `ray start` nodes of one CPU
each on 127.0.0.1, usage statistics off, no dashboard) and runs the real command in a child
process, as a user would. Slow (a cluster takes ~10 s to start): `-m "not cluster"` skips them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from smolvlm_desktop.cli import EXIT_USAGE, main
from ray_cluster import LoopbackCluster, ray_env
from test_batch import make_images

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
N_IMAGES = 40
KILL_AFTER = 8  # results received before the worker node is killed


def started_cluster():  # type: ignore[no-untyped-def]
    pytest.importorskip("ray", reason="the 'cluster' extra is not installed")
    started = LoopbackCluster(workers=1)
    try:
        yield started
    finally:
        started.stop()
    assert not started.pids(), "a Ray process of the test cluster outlived it"


cluster = pytest.fixture(scope="module")(started_cluster)  # shared by the tests that keep it whole
doomed_cluster = pytest.fixture(started_cluster)  # its own, for the test that kills a node


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


def test_a_two_node_cluster_captions_like_one_machine(cluster: LoopbackCluster, tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    """Relative paths too: the workers' working folder is not the command's."""
    make_images(tmp_path / "local", N_IMAGES)
    make_images(tmp_path / "cluster", N_IMAGES)
    env = ray_env()
    local = subprocess.run(caption_command(tiny_model_dir, Path("local")), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr
    remote = subprocess.run(caption_command(tiny_model_dir, Path("cluster"), "--cluster", cluster.address),
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert remote.returncode == 0, remote.stderr

    here, there = answers(local.stdout), answers(remote.stdout)
    assert len(there) == N_IMAGES
    assert {n: (r["text"], r["token_ids"]) for n, r in there.items()} == \
           {n: (r["text"], r["token_ids"]) for n, r in here.items()}
    assert written(tmp_path / "cluster") == written(tmp_path / "local")
    assert len(written(tmp_path / "cluster")) == N_IMAGES


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
    assert len(lines) > KILL_AFTER, "the job ended before the node was killed"
    assert len(answers("".join(lines))) == N_IMAGES
    assert len(written(folder)) == N_IMAGES


def test_ctrl_c_stops_a_cluster_batch_and_the_same_command_finishes_it(
        cluster: LoopbackCluster, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_images(folder, N_IMAGES)
    command = caption_command(tiny_model_dir, folder, "--cluster", cluster.address)
    rc, first, _ = run_until(command, KILL_AFTER, lambda child: child.send_signal(signal.SIGINT))
    assert rc == 130 and len(first) < N_IMAGES
    again = subprocess.run(command, env=ray_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resuming job" in again.stderr
    answers("".join(first) + again.stdout)  # no image reported twice over both runs
    assert len(written(folder)) == N_IMAGES


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
    to point anywhere), with the token of this run kept in the environment."""
    pytest.importorskip("ray", reason="the 'cluster' extra is not installed")
    folder, home = tmp_path / "photos", tmp_path / "home"
    make_images(folder, 4)
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="smr", dir="/tmp")  # short: Ray's socket paths
    env = {**ray_env(), "HOME": str(home), "RAY_TMPDIR": ray_tmp}
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
