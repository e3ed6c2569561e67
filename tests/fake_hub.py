"""A tiny stand-in for the Hugging Face Hub, served on 127.0.0.1 for the model-manager tests.

These machines cannot reach the real Hub, so the tests point `HF_ENDPOINT` here and let the real
huggingface_hub client talk to it. It answers only what `smolvlm_desktop.hub.pull` asks, in the
shapes the real Hub uses:

- `GET /api/models/{repo}/revision/{rev}?blobs=True`: model info with the resolved commit (`sha`)
  and, per file, its size, git blob id and (for LFS files) the LFS sha256;
- `GET /{repo}/resolve/{rev}/{path}`: the file, with ETag, X-Repo-Commit, Content-Length and
  Range support. LFS files answer with a 302 to a "CDN" URL on this same server, as the Hub does.

Two faults can be switched on per file: `cut[path] = n` sends only part of the body and drops the
connection, n times (to test resume); `corrupt.add(path)` serves bytes that differ from the
advertised sha256 (to test the checksum check). Every request is logged in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    repo_id: str
    commit: str  # 40 hex digits: what the Hub resolves any known revision to
    files: dict[str, bytes]
    lfs_suffixes: tuple[str, ...] = (".onnx", ".onnx_data", "tokenizer.json")

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)

    @classmethod
    def from_folder(cls, repo_id: str, commit: str, folder: Path, include: tuple[str, ...] = ("*",)) -> FakeRepo:
        """Serve the files of a real model folder (e.g. the bundled tiny model)."""
        files = {}
        for pattern in include:
            for p in sorted(folder.rglob(pattern)):
                if p.is_file():
                    files[p.relative_to(folder).as_posix()] = p.read_bytes()
        return cls(repo_id, commit, files)


@dataclass
class LoggedRequest:
    method: str
    path: str
    range: str | None


def git_blob_id(data: bytes) -> str:
    """The git object id of a file: what the Hub reports as blobId for a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class FakeHub:
    repos: list[FakeRepo]
    cut: dict[str, int] = field(default_factory=dict)  # path -> how many more times to cut it
    corrupt: set[str] = field(default_factory=set)
    requests: list[LoggedRequest] = field(default_factory=list)
    sent: list[tuple[str, str | None]] = field(default_factory=list)  # (file path, Range header)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def find(self, repo_id: str, revision: str) -> FakeRepo | None | bool:
        """The repo if it exists and knows the revision; None if no such repo; False if no such revision."""
        for repo in self.repos:
            if repo.repo_id == repo_id:
                return repo if revision in ("main", repo.commit) else False
        return None

    def served(self, path: str) -> list[str | None]:
        """The Range header (None for a whole file) of every time the bytes of `path` were sent."""
        return [r for p, r in self.sent if p == path]


API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
CDN_RE = re.compile(r"^/__cdn/(?P<repo>[^/]+/[^/]+)/(?P<commit>[0-9a-f]{40})/(?P<path>.+)$")
RANGE_RE = re.compile(r"^bytes=(\d+)-$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.0"  # one response per connection: a cut is simply a closed socket

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.fake.requests.append(LoggedRequest("GET", path, self.headers.get("Range")))
        for pattern, handler in ((API_RE, self._model_info), (RESOLVE_RE, self._resolve), (CDN_RE, self._cdn)):
            match = pattern.match(path)
            if match:
                handler(**match.groupdict())
                return
        self._error(404, "EntryNotFound", "no such endpoint")

    def _lookup(self, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.fake.find(repo_id, revision)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo is False:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo  # type: ignore[return-value]

    def _model_info(self, repo: str, rev: str | None) -> None:
        found = self._lookup(repo, rev or "main")
        if found is None:
            return
        siblings = []
        for name, data in sorted(found.files.items()):
            entry: dict = {"rfilename": name, "size": len(data)}
            if found.is_lfs(name):
                pointer = lfs_pointer(data)
                entry["blobId"] = git_blob_id(pointer)
                entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                "pointerSize": len(pointer)}
            else:
                entry["blobId"] = git_blob_id(data)
            siblings.append(entry)
        body = json.dumps({"id": found.repo_id, "modelId": found.repo_id, "sha": found.commit,
                           "private": False, "siblings": siblings}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _resolve(self, repo: str, rev: str, path: str) -> None:
        found = self._lookup(repo, rev)
        if found is None:
            return
        if path not in found.files:
            self._error(404, "EntryNotFound", f"{path} does not exist")
            return
        if found.is_lfs(path):  # the Hub sends LFS files from a CDN
            self.send_response(302)
            self.send_header("Location", f"/__cdn/{found.repo_id}/{found.commit}/{path}")
            self.send_header("X-Repo-Commit", found.commit)
            self.send_header("X-Linked-Size", str(len(found.files[path])))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(found, path)

    def _cdn(self, repo: str, commit: str, path: str) -> None:
        found = self._lookup(repo, commit)
        if found is not None:
            self._send_file(found, path)

    def _send_file(self, repo: FakeRepo, path: str) -> None:
        data = repo.files[path]
        if path in self.fake.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]  # same size, different sha256
        start = 0
        wanted = self.headers.get("Range")
        if wanted:
            match = RANGE_RE.match(wanted)
            if not match or int(match.group(1)) >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match.group(1))
        body = data[start:]
        self.fake.sent.append((path, wanted))
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.sha256(repo.files[path]).hexdigest()}"')
        self.send_header("X-Repo-Commit", repo.commit)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.fake.cut.get(path, 0) > 0:
            self.fake.cut[path] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-body, like a flaky network
            return
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
