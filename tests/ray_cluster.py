"""A real Ray cluster of separate nodes on this machine, on the loopback only, for tests.

Each node is a `ray start` of its own (a raylet with its own object store), so killing one
node's raylet is a node dying mid-job. Every node starts with usage statistics off and no
dashboard. Addresses: `ray start` turns 127.0.0.1 into the machine's outward address (found
by a UDP connect to 8.8.8.8), so it runs here with that one function made the identity
(RAY_START); drivers get RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, under which Ray keeps 127.0.0.1
too; the head keeps Ray's multi-node switch off, so that the processes it starts keep it.
Loopback throughout.

A worker node can be made not to see some folders (`hidden`), as a machine without a copy
of them: it runs in a mount namespace of its own (`unshare`, where the kernel allows it)
with an empty tmpfs over each; its temp dir is inside the cluster's, removed with it.

Stopping kills only the processes of this cluster (`ray stop` would stop every Ray process
of the user), found by a variable in their environment that names the cluster's temp dir:
every process `ray start` starts inherits it, while Ray rewrites the command lines of many
(`ray::DashboardAgent`, `ray::MapWorker...`), which a search by command line missed, and
its agents outlive their raylet.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

# Token authentication, the token in the environment only: Ray would otherwise read (or, for
# ray.init, write) ~/.ray/auth_token, and a token left there by anything else breaks a join.
TOKEN = secrets.token_hex(32)
_SELF = {os.getpid(), os.getppid()}  # their environments may hold the marker too
# `ray start`, with Ray's "127.0.0.1 means the machine's outward address" rule switched off
RAY_START = [sys.executable, "-c",
             "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h; "
             "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()", "start"]
ROOT = Path(__file__).resolve().parent.parent
MARKER = "SMOLVLM_TEST_RAY_CLUSTER"  # in every process of a cluster: its temp dir
# The head notices a dead node after 3 missed health checks a second apart, not Ray's 5 of
# 3 s: the test of a node killed mid-job waits for that (a check still waits up to Ray's
# 10 s for an answer, so a node slowed by a busy machine is not taken for dead).
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def ray_env() -> dict[str, str]:
    """The environment of every Ray process and driver in the tests."""
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def free_port() -> int:
    """A free TCP port on the loopback (bound and released: nothing is connected to)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackCluster:
    """`ray start --head` plus `workers` more nodes, `cpus` CPUs each (one by default)."""

    def __init__(self, workers: int = 1, cpus: int = 1, hidden: Sequence[Path] = ()) -> None:
        # short: Ray's Unix socket paths must fit in 107 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="smr", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.worker_raylets: list[int] = []
        self.cpus = cpus
        self.worker_tmp = Path(self.temp_dir) / "worker-tmp"  # TMPDIR of worker nodes
        self.worker_tmp.mkdir()
        try:
            self._start("--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--system-config", json.dumps(FAST_NODE_DEATH))
            for _ in range(workers):
                before = set(self.raylets())
                self._start("--address", self.address, hidden=hidden)
                self.worker_raylets += sorted(set(self.raylets()) - before)
        except BaseException:
            self.stop()
            raise

    def _start(self, *args: str, hidden: Sequence[Path] = ()) -> None:
        """One `ray start`. Only a node joining another needs Ray's multi-node switch on
        (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1): the head keeps it off, so that the processes
        it starts, which RAY_START's patch does not reach, keep 127.0.0.1 too."""
        joining = "--address" in args
        env = {**ray_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1" if joining else "0",
               MARKER: self.temp_dir}
        if joining:
            env["TMPDIR"] = str(self.worker_tmp)
        command = [*RAY_START, *args, "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
                   "--disable-usage-stats", "--temp-dir", self.temp_dir]
        if hidden:
            prefix = hiding_prefix()
            if not prefix:  # never mount anything over the folders of this machine itself
                raise RuntimeError("no mount namespace can be made here to hide folders in")
            command = [*prefix, "sh", "-c",
                       'for d in $HIDE; do mount -t tmpfs tmpfs "$d" || exit 1; done; exec "$@"',
                       "sh", *command]
            env["HIDE"] = " ".join(str(Path(d).resolve()) for d in hidden)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def pids(self) -> list[int]:
        """Every live process of this cluster."""
        return marked_processes(self.temp_dir)

    def raylets(self) -> list[int]:
        return [pid for pid in self.pids() if _cmd(pid).split(b"\0")[0].endswith(b"/raylet")]

    def kill_worker_node(self) -> None:
        """The first worker node's raylet dies at once (SIGKILL), as on a crashed machine."""
        os.kill(self.worker_raylets[0], signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for what is left after a moment: Ray's GCS and raylets, all
        told at once, wait for each other to shut down gracefully (ten seconds and more)."""
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def marked_processes(value: str) -> list[int]:
    """The live processes with MARKER=value in their environment (this one and its parent
    aside). Zombies are not live: Ray's daemons are re-parented to PID 1, which may be slow
    to reap them."""
    wanted = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in _SELF:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if wanted in environ and state != "Z":
            found.append(int(entry.name))
    return found


def hiding_prefix() -> list[str]:
    """The `unshare` command line for a process with mounts of its own: as root, a mount
    namespace; otherwise also a user namespace, where the kernel allows unprivileged ones.
    Empty if neither works here (the tests that need it skip)."""
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--map-root-user", "--mount", "--propagation", "private"]):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            break
    return []


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
