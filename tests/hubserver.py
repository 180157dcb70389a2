"""A tiny Hub look-alike on 127.0.0.1 for tests: serves /<repo>/resolve/<revision>/<file> the way the
Hub does (X-Repo-Commit, ETag, X-Error-Code on 404), so the real huggingface_hub client can talk to it."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class FakeHub:
    """repos: {repo_id: {revision_or_branch: (commit_sha, {filename: bytes})}}."""

    def __init__(self):
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.corrupt: set[str] = set()  # filenames served with flipped bytes (same length)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def add_commit(self, repo_id: str, folder: Path, branches: list[str]) -> str:
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        commit = hashlib.sha1(b"".join(files.values()) + repo_id.encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, {})
        for ref in branches + [commit]:
            repo[ref] = (commit, files)
        return commit

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def _respond(self, head: bool):
                path = unquote(self.path.split("?")[0])
                hub.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepoNotFound")
                repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound")
                if revision not in repo:
                    return self._error(404, "RevisionNotFound")
                commit, files = repo[revision]
                if filename not in files:
                    return self._error(404, "EntryNotFound", commit)
                data = files[filename]
                if filename in hub.corrupt:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", '"' + hashlib.sha256(files[filename]).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _error(self, code: int, error_code: str, commit: str | None = None):
                body = f'{{"error": "{error_code}"}}'.encode()
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self._respond(head=True)

            def do_GET(self):
                self._respond(head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
