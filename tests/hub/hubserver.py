"""A real Hub-compatible HTTP server on 127.0.0.1 for the download tests (used through conftest's fixtures).

The server speaks the part of the Hub protocol that huggingface_hub's downloader uses: HEAD and GET on
``/{repo_id}/resolve/{revision}/{filename}`` with the headers the client reads (``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length``), branches/tags and commits, the ``X-Error-Code``
values of its 404s, and injectable failures (HTTP 500). It logs every request so tests can see cache hits.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


class FakeHub:
    """In-memory Hub: repos with commits and refs; ``fail[repo_id] = status`` makes a repo answer with errors."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def commit(self, repo_id: str, files: dict[str, bytes], *, ref: str = "main") -> str:
        """Add a commit holding ``files`` (on top of ``ref``'s files) and move ``ref`` to it."""
        repo = self.repos.setdefault(repo_id, Repo())
        base = dict(repo.commits.get(repo.refs.get(ref, ""), {}))
        base.update(files)
        sha = hashlib.sha1(f"{repo_id}:{len(repo.commits)}:{sorted(base)}".encode()).hexdigest()
        repo.commits[sha] = base
        repo.refs[ref] = sha
        return sha

    def count(self, method: str, needle: str = "") -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and needle in p)

    def reset_log(self) -> None:
        with self.lock:
            self.requests.clear()


def make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET" and body:
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(status, headers, json.dumps({"error": message}).encode())

        def _resolve(self) -> None:
            with hub.lock:
                hub.requests.append((self.command, self.path))
            parts = self.path.split("?")[0].split("/")
            # /{owner}/{name}/resolve/{revision}/{filename...}
            if len(parts) < 6 or parts[3] != "resolve":
                self._error(404, None, "not found")
                return
            repo_id = f"{parts[1]}/{parts[2]}"
            revision = unquote(parts[4])
            filename = unquote("/".join(parts[5:]))
            if repo_id in hub.fail:
                self._error(hub.fail[repo_id], None, "internal server error")
                return
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            commit = repo.refs.get(revision, revision if revision in repo.commits else None)
            if commit is None:
                self._error(404, "RevisionNotFound", "Invalid rev id")
                return
            content = repo.commits[commit].get(filename)
            if content is None:
                self._error(404, "EntryNotFound", "Entry not found", commit)
                return
            etag = f'"{hashlib.sha256(content).hexdigest()}"'
            headers = {
                "Content-Type": "application/octet-stream",
                "X-Repo-Commit": commit,
                "ETag": etag,
                "X-Linked-Etag": etag,
                "X-Linked-Size": str(len(content)),
                "Accept-Ranges": "bytes",
            }
            self._send(200, headers, content)

        do_GET = _resolve  # noqa: N815
        do_HEAD = _resolve  # noqa: N815

    return Handler


@dataclass(frozen=True)
class WeightFiles:
    b: bytes  # a valid serpent-b weights file
    b2: bytes  # another valid serpent-b file (different weights)
    sl: bytes  # a valid serpent-l weights file
    b_path: Path
    l_path: Path

    @staticmethod
    def sha(content: bytes) -> str:
        return hashlib.sha256(content).hexdigest()


def closed_port() -> int:
    """A local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_hub() -> FakeHub:
    """A FakeHub serving on a free port of 127.0.0.1 from a daemon thread."""
    hub = FakeHub()
    hub.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
    hub.server.daemon_threads = True
    threading.Thread(target=hub.server.serve_forever, daemon=True).start()
    return hub
