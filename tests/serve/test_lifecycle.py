"""The server process: 503 while loading, SIGTERM drains running requests and exits 0, and startup
failures (port in use, a missing model) are one clear line and a non-zero exit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import httpx
from server import ServerProcess


def test_health_is_503_while_loading_then_200(new_server):
    s = new_server().start()
    assert s.saw_loading  # the port answers before the model is loaded
    assert httpx.get(s.url + "/health").json() == {"status": "ok"}


def test_sigterm_drains_running_requests_and_exits_0(new_server):
    s = new_server().start()
    events: list[dict] = []
    first = threading.Event()

    def client() -> None:
        body = {
            "messages": [{"role": "user", "content": "Count to fifty."}],
            "max_tokens": 60,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
        for ev in s.stream("/v1/chat/completions", body):
            events.append(ev)
            first.set()

    t = threading.Thread(target=client)
    t.start()
    assert first.wait(60)
    s.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert s.proc.wait(60) == 0
    # the stream ran to its end ([DONE] is asserted by s.stream) with every token
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for e in events if e["choices"][0]["delta"].get("content")) >= 55
    try:
        httpx.get(s.url + "/health", timeout=2)
        raise AssertionError("still accepting connections after draining")
    except httpx.TransportError:
        pass


def test_port_in_use_is_one_line(server):
    port = server.url.rsplit(":", 1)[1]
    r = subprocess.run(
        [sys.executable, "-m", "llama3", "serve", "--port", port],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in r.stderr


def test_missing_model_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "llama3", "serve", "--port", "0", "--model", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "error:" in r.stderr and "no" in r.stderr


def test_broken_model_exits_after_reporting(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    s = ServerProcess(model=bad)
    try:
        s.start(wait_ready=False)
        assert s.proc.wait(60) == 1
    finally:
        s.stop()
    assert "error:" in s.log and "Traceback" not in s.log
    assert json.dumps(s.log)  # printable
