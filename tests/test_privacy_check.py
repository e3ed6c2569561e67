"""CI's privacy check (scripts/privacy_check.py) must be able to fail: its reading of strace's
log, on lines taken from real runs (the onnxruntime 1.32 telemetry it was written to catch)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("privacy_check", REPO / "scripts" / "privacy_check.py")
check = importlib.util.module_from_spec(_spec)
sys.modules["privacy_check"] = check
_spec.loader.exec_module(check)

BOX = Path("/tmp/box")
ALLOWED = [BOX / "out", BOX / "home/.cache/smolvlm-desktop", BOX / "home/.local/share/smolvlm-desktop"]

# From a real run of the old app (telemetry on): the DNS look-up of the collector's host.
TELEMETRY = """\
socket(AF_INET6, SOCK_DGRAM, IPPROTO_IP) = 13<socket:[19852]>
socket(AF_INET, SOCK_DGRAM|SOCK_CLOEXEC|SOCK_NONBLOCK, IPPROTO_IP) = 12<socket:[22148]>
connect(12<socket:[22148]>, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0
mkdir("/tmp/box/home/.cache/Microsoft", 0700) = 0
openat(AT_FDCWD</tmp/box/cwd>, "/tmp/box/home/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0644) = 7</tmp/box/home/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db>
linkat(6</tmp/box/home/.cache/Microsoft/DeveloperTools/.onnxruntime>, "deviceid.tmp.cbf4", 6</tmp/box/home/.cache/Microsoft/DeveloperTools/.onnxruntime>, "deviceid", 0) = 0
"""

# What the app itself does, all of it allowed or harmless.
CLEAN = """\
socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 5<socket:[1]>
connect(14, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT (No such file or directory)
openat(AT_FDCWD</tmp/box/cwd>, "/work/main/smolvlm_desktop/data/tiny-smolvlm/config.json", O_RDONLY|O_CLOEXEC) = 3</work/x>
openat(AT_FDCWD</tmp/box/cwd>, "/tmp/box/out/metadata.jsonl.tmp", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 4</tmp/box/out/metadata.jsonl.tmp>
renameat2(AT_FDCWD</tmp/box/cwd>, "/tmp/box/out/metadata.jsonl.tmp", AT_FDCWD</tmp/box/cwd>, "/tmp/box/out/metadata.jsonl", RENAME_NOREPLACE) = 0
mkdir("/tmp/box/home/.cache/smolvlm-desktop/ort-cache/x", 0777) = 0
openat(5</tmp/box/home/.local/share/smolvlm-desktop>, "library.sqlite3-wal", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 6</x>
openat(AT_FDCWD</tmp/box/cwd>, "/tmp/box/elsewhere.txt", O_WRONLY|O_CREAT|O_EXCL, 0600) = -1 EACCES (Permission denied)
openat(AT_FDCWD</tmp/box/cwd>, "/dev/null", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3</dev/null>
"""


def test_the_telemetry_of_onnxruntime_1_32_is_caught():
    found = check.violations(TELEMETRY, BOX / "cwd", ALLOWED)
    assert sum(f.startswith("internet socket") for f in found) == 3
    created = [f for f in found if f.startswith("created outside")]
    assert any(f.endswith("/.cache/Microsoft") for f in created)
    assert any(f.endswith("/onnxruntime.db") for f in created)
    assert any(f.endswith("/.onnxruntime/deviceid") for f in created)  # linkat's new name


def test_what_the_app_does_in_its_own_folders_passes():
    assert check.violations(CLEAN, BOX / "cwd", ALLOWED) == []


def test_a_file_made_in_the_working_folder_is_caught():
    """A relative path is the working folder's (where issue 15's empty batch field wrote)."""
    line = 'openat(AT_FDCWD</tmp/box/cwd>, "photo.txt", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3</x>\n'
    assert check.violations(line, BOX / "cwd", ALLOWED) == [
        "created outside the app's folders: /tmp/box/cwd/photo.txt"]


def test_a_rename_out_of_the_allowed_folders_is_caught():
    line = ('rename("/tmp/box/out/a.tmp", "/tmp/box/home/a.txt") = 0\n'
            'symlinkat("/etc/passwd", 4</tmp/box/home>, "link") = 0\n')
    assert check.violations(line, BOX / "cwd", ALLOWED) == [
        "created outside the app's folders: /tmp/box/home/a.txt",
        "created outside the app's folders: /tmp/box/home/link"]


def test_an_unfinished_socket_call_still_counts():
    line = "socket(AF_INET6, SOCK_DGRAM|SOCK_CLOEXEC, IPPROTO_IP <unfinished ...>\n"
    assert check.violations(line, BOX / "cwd", ALLOWED)
