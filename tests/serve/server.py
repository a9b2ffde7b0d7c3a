"""A real `llama3 serve` subprocess on a free loopback port, for the server tests.

`ServerProcess` mirrors the CLI flags as attributes (llama.cpp's server test suite does the same):
set them, `start()`, talk to `url`, `stop()`. `--port 0` lets the server pick a free port; the
address is read from the line it prints before the model loads.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_ADDR = re.compile(r"llama3 serve: (http://\S+) ")


@dataclass
class ServerProcess:
    model: Path | None = None
    served_model_name: str | None = None
    max_num_seqs: int = 8
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = 1024
    kv_cache_memory: str | None = "96MiB"
    api_keys: list[str] = field(default_factory=list)
    max_queue: int | None = None
    request_timeout: float | None = None
    allowed_origins: list[str] = field(default_factory=list)
    max_body_size: str | None = None
    extra: list[str] = field(default_factory=list)

    proc: subprocess.Popen | None = None
    url: str = ""
    saw_loading: bool = False
    _log: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "llama3", "serve", "--host", "127.0.0.1", "--port", "0"]
        opts = {
            "--model": self.model,
            "--served-model-name": self.served_model_name,
            "--max-num-seqs": self.max_num_seqs,
            "--max-num-batched-tokens": self.max_num_batched_tokens,
            "--max-model-len": self.max_model_len,
            "--kv-cache-memory": self.kv_cache_memory,
            "--max-queue": self.max_queue,
            "--request-timeout": self.request_timeout,
            "--max-body-size": self.max_body_size,
        }
        for flag, v in opts.items():
            if v is not None:
                cmd += [flag, str(v)]
        for k in self.api_keys:
            cmd += ["--api-key", k]
        for o in self.allowed_origins:
            cmd += ["--allowed-origin", o]
        return cmd + self.extra

    def start(self, timeout: float = 120.0, wait_ready: bool = True) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("LLAMA3_API_KEY", None)
        self.proc = subprocess.Popen(
            self.command(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stderr:
            self._log.append(line)
            m = _ADDR.search(line)
            if m:
                self.url = m.group(1)
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self._log))
        # keep draining stderr so the server never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()
        if wait_ready:
            self.wait_ready(deadline)
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.append(line)

    @property
    def log(self) -> str:
        return "".join(self._log)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                r = httpx.get(self.url + "/health", timeout=5)
                if r.status_code == 200:
                    return
                if r.status_code == 503:
                    self.saw_loading = True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server not ready in time:\n" + self.log)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    # ---- requests --------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_keys[0]}"} if self.api_keys else {}

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        kw.setdefault("timeout", 120)
        headers = {**self.headers(), **kw.pop("headers", {})}
        return httpx.post(self.url + path, json=body, headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("timeout", 30)
        headers = {**self.headers(), **kw.pop("headers", {})}
        return httpx.get(self.url + path, headers=headers, **kw)

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """The JSON events of a streamed response, up to `[DONE]` (asserted to come last)."""
        with httpx.stream(
            "POST", self.url + path, json=body, headers=self.headers(), timeout=120
        ) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            done = False
            for line in r.iter_lines():
                if not line:
                    continue
                assert line.startswith("data: "), line
                assert not done, "event after [DONE]"
                data = line[len("data: ") :]
                if data == "[DONE]":
                    done = True
                    continue
                yield json.loads(data)
            assert done, "stream ended without [DONE]"

    def metrics(self) -> dict[str, float]:
        """Prometheus samples without labels (and `name{labels}` keys for labelled ones)."""
        out: dict[str, float] = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out
