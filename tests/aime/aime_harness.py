"""Real processes for the AIME tests: the AIME API Server, `llama3 aime-worker`, and a client.

`AimeServer` runs ../shared/aime/start-server.sh (aime-api-server 0.9.6 with its own pinned
requirements in .venv-aime, made by .ci/setup-aime.sh) on a free loopback port. `Worker` runs
`python -m llama3 aime-worker` and collects its stderr lines so tests can wait for one.
`AimeClient` speaks the server's client API: login, a job request, progress polling.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
AIME_DIR = Path(os.environ.get("AIME_SHARED", REPO.parent / "shared" / "aime")).resolve()
START_SERVER = AIME_DIR / "start-server.sh"
ENDPOINT_CFG = AIME_DIR / "config" / "endpoints" / "llama3_chat" / "aime_api_endpoint.cfg"
AIME_VENV = REPO / ".venv-aime"
ENDPOINT = "llama3_chat"


def endpoint_config() -> dict[str, Any]:
    with open(ENDPOINT_CFG, "rb") as f:
        return tomllib.load(f)


def worker_key() -> str:
    return endpoint_config()["WORKER"]["auth_key"]


def client_user_key() -> tuple[str, str]:
    (user, key), *_ = endpoint_config()["CLIENTS"]["authorization_keys"].items()
    return user, key


def aime_python() -> Path:
    """The interpreter with the server's requirements; the setup script makes it (it is quick
    and idempotent, so running it here keeps the tests runnable from a bare checkout)."""
    subprocess.run(["bash", str(REPO / ".ci" / "setup-aime.sh")], check=True, cwd=REPO)
    py = AIME_VENV / "bin" / "python"
    if not py.exists():
        raise RuntimeError(f"{py} missing after .ci/setup-aime.sh")
    return py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Lines:
    """A child's output lines, read on a thread; `wait_for` blocks until a line matches."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        # Lines may end in "\r" (an in-place status line on a terminal): split on both.
        buf = ""
        for chunk in iter(lambda: stream.read(1), ""):
            buf += chunk
            if chunk in "\r\n":
                with self._cond:
                    if buf.strip():
                        self.lines.append(buf.rstrip("\r\n"))
                    self._cond.notify_all()
                buf = ""
        with self._cond:
            if buf.strip():
                self.lines.append(buf)
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout} s; got:\n" + self.text()
                    )
                self._cond.wait(min(left, 0.5))

    def text(self) -> str:
        return "\n".join(self.lines[-60:])


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class AimeServer:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    out: _Lines | None = None
    run_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> AimeServer:
        env = dict(os.environ, PYTHON=str(aime_python()))
        if self.run_dir is not None:
            env["AIME_RUN_DIR"] = str(self.run_dir)
        self.proc = subprocess.Popen(
            ["bash", str(START_SERVER), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.out = _Lines(self.proc.stdout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the AIME server exited:\n{self.out.text()}")
            try:
                r = httpx.post(
                    f"{self.url}/worker_check_server_status",
                    json={"auth": "probe", "job_type": "llama3", "auth_key": "x"},
                    timeout=2,
                )
                if r.status_code == 200 and "key_valid" in r.json():
                    return self
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"the AIME server did not answer in {timeout} s:\n{self.out.text()}")

    def kill(self) -> None:
        """Die like a crash (SIGKILL): no goodbye to connected workers."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Worker:
    api_server: str
    model: Path
    auth_key: str = field(default_factory=worker_key)
    max_batch: int = 2
    max_seq_len: int = 512
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    err: _Lines | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llama3",
            "aime-worker",
            "--api-server",
            self.api_server,
            "--api-auth-key",
            self.auth_key,
            "--model",
            str(self.model),
            "--max-batch",
            str(self.max_batch),
            "--max-seq-len",
            str(self.max_seq_len),
            "--quiet",
            *self.extra,
        ]

    def start(self, wait_ready: bool = True, timeout: float = 120) -> Worker:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self.err = _Lines(self.proc.stderr)
        if wait_ready:
            self.err.wait_for(r"llama3 aime-worker: .* serving ", timeout)
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Teardown: nothing left to collect, so a second signal right after the first, which
        hangs up the open job request at once instead of letting it run out (up to 30 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        _stop(self.proc)


class AimeClient:
    """The server's client API (what AIME's JS and Python client interfaces do)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=300)
        user, key = client_user_key()
        r = self.http.get(f"/{ENDPOINT}/login", params={"user": user, "key": key}).json()
        assert r["success"], r
        self.session = r["client_session_auth_key"]

    def close(self) -> None:
        self.http.close()

    def request(self, wait: bool = True, **inputs: Any) -> dict[str, Any]:
        body = dict(inputs, client_session_auth_key=self.session, wait_for_result=wait)
        if isinstance(body.get("chat_context"), list):
            body["chat_context"] = json.dumps(body["chat_context"])  # the clients send a string
        r = self.http.post(f"/{ENDPOINT}", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def progress(self, job_id: str) -> dict[str, Any]:
        body = {"client_session_auth_key": self.session, "job_id": job_id}
        return self.http.post(f"/{ENDPOINT}/progress", json=body).json()
