"""Loopback HTTP servers for the download tests: a Meta-style signed-URL CDN and a tiny HF hub.

Both are real `http.server` servers on 127.0.0.1 in a thread, serving files the tests write. The CDN
checks a CloudFront-style signed query string (403 when it is wrong or the link is "expired"),
honours Range requests, and logs every transfer so tests can assert what went over the wire. The hub
serves the few endpoints `huggingface_hub.snapshot_download` calls for a repo without Xet storage.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

SIGNATURE = "sEcReT-sIgNaTuRe~0123456789"
POLICY = "eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiKiJ9XX0_"
QUERY = f"Policy={POLICY}&Signature={SIGNATURE}&Key-Pair-Id=K15TEST&Download-Request-ID=42"


@dataclass
class Transfer:
    path: str
    status: int
    start: int  # first byte offset sent
    sent: int  # body bytes sent


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Base:
    def __init__(self) -> None:
        self.server: _Server | None = None
        self.released = threading.Event()  # set by stop(): lets stalled handlers finish

    def start(self) -> str:
        handler = self.handler()
        self.server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError


class FakeMetaCDN(_Base):
    """Serves `root` like Meta's CDN: `GET /<path>?Policy=…&Signature=…&Key-Pair-Id=…`.

    Knobs: `expired` (403 for everything), `ignore_range` (always 200, whole file),
    `drop_after[path] = n` (send n bytes of that file once, then close the connection),
    `stall_after[path] = n` (send n bytes once, then hang until `stop()`, like a dead link).
    """

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.expired = False
        self.ignore_range = False
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.log: list[Transfer] = []

    def url(self, base: str) -> str:
        return f"{base}/*?{QUERY}"

    def sent(self, path: str) -> int:
        return sum(t.sent for t in self.log if t.path == path)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                path = unquote(parts.path).lstrip("/")
                q = parse_qs(parts.query)
                signed = q.get("Signature") == [SIGNATURE] and q.get("Key-Pair-Id") == ["K15TEST"]
                if cdn.expired or not signed:
                    return self._reply(path, 403, b"<Error><Code>AccessDenied</Code></Error>")
                file = cdn.root / path
                if ".." in Path(path).parts or not file.is_file():
                    return self._reply(path, 404, b"<Error><Code>NoSuchKey</Code></Error>")
                data = file.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and not cdn.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        return self._reply(
                            path, 416, b"", {"Content-Range": f"bytes */{len(data)}"}
                        )
                    headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                    return self._reply(path, 206, data[start:], headers, start)
                return self._reply(path, 200, data)

            def _reply(self, path, status, body, headers=None, start=0) -> None:
                length = len(body)
                cut = cdn.drop_after.pop(path, None)
                stall = cdn.stall_after.pop(path, None)
                if cut is not None or stall is not None:
                    body = body[: cut if cut is not None else stall]
                    self.close_connection = True
                # logged before replying, so the log is complete once the client has the reply
                cdn.log.append(Transfer(path, status, start, len(body) if status < 300 else 0))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if stall is not None:
                    cdn.released.wait(60)

        return Handler


def write_meta_layout(root: Path, remote: str, files: dict[str, bytes]) -> dict[str, str]:
    """Write `root/<remote>/<name>` for each file plus a correct `checklist.chk`; returns md5s."""
    folder = root / remote
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        sums[name] = hashlib.md5(data).hexdigest()
    (folder / "checklist.chk").write_text("".join(f"{m}  {n}\n" for n, m in sums.items()))
    return sums


class FakeHub(_Base):
    """The hub endpoints snapshot_download uses, for `repos = {repo_id: {path: bytes}}`.

    `gated` repos answer 401 GatedRepo and unknown repos 401 RepoNotFound, as the real hub does for
    a request without a token.
    """

    SHA = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.repos = repos
        self.gated = gated
        self.requests: list[str] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                if path.startswith("/api/models/"):
                    rest = path.removeprefix("/api/models/")
                    repo_id, _, tail = _split_repo(rest, "/revision/", "/tree/")
                    if (err := self._check(repo_id)) is not None:
                        return err
                    files = hub.repos[repo_id]
                    if "/revision/" in rest:
                        body = {
                            "id": repo_id,
                            "sha": hub.SHA,
                            "siblings": [{"rfilename": f} for f in files],
                        }
                    else:
                        body = [
                            {"type": "file", "path": p, "size": len(d), "oid": _git_oid(d)}
                            for p, d in files.items()
                        ]
                    return self._reply(200, json.dumps(body).encode(), head)
                repo_id, _, rest = _split_repo(path.lstrip("/"), "/resolve/")
                if (err := self._check(repo_id)) is not None:
                    return err
                filename = rest.partition("/")[2]
                data = hub.repos[repo_id].get(filename)
                if data is None:
                    return self._reply(404, b"", head, {"X-Error-Code": "EntryNotFound"})
                headers = {"X-Repo-Commit": hub.SHA, "ETag": f'"{_git_oid(data)}"'}
                return self._reply(200, data, head, headers)

            def _check(self, repo_id: str):
                if repo_id in hub.gated:
                    return self._reply(401, b"", False, {"X-Error-Code": "GatedRepo"})
                if repo_id not in hub.repos:
                    return self._reply(401, b"", False, {"X-Error-Code": "RepoNotFound"})
                return None

            def _reply(self, status, body, head, headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                return True

        return Handler


def _split_repo(path: str, *markers: str) -> tuple[str, str, str]:
    for marker in markers:
        if marker in path:
            return path.partition(marker)
    return path, "", ""


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
