"""Soak: many concurrent streaming clients against one `llama3 serve` for minutes, then an audit.

Each of --clients clients loops until --duration seconds have passed, sending streaming
`POST /v1/chat/completions` requests with a random prompt length, a random `max_tokens`, sometimes
stop strings, sometimes `n` > 1; --disconnect of them (20 % by default) close the connection after a
few chunks. At the end the script checks, and prints:

- errors: any response other than 200 or the 429 the queue limit promises, any broken stream;
- lost requests: a stream that was not cut by its client but did not end with `data: [DONE]` and
  a `finish_reason` for each of its `n` choices; duplicated: a completion id seen twice;
- the server's /metrics once every client has stopped: running and waiting back to 0, every
  KV-cache block free;
- the server's RSS every few seconds and its slope after --warmup seconds (MiB per minute, least
  squares).

    python bench/soak.py [--model PATH] [--clients 64] [--duration 600] [--disconnect 0.2]
        [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a quiet river of light runs under old stone bridges where foxes sleep and owls".split()
STOPS = ["\n\n", ".", "!", "The end", "river"]


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    disconnected: int = 0
    rejected_429: int = 0
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    tokens: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    cov = sum((t - mt) * (r - mr) for t, r in samples)
    return cov / var * 60 if var else 0.0


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for name in (
        "llama3_requests_running",
        "llama3_requests_waiting",
        "llama3_kv_cache_blocks",
        "llama3_kv_cache_free_blocks",
    ):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


async def one_request(c: httpx.AsyncClient, model: str, rng: random.Random, t: Tally, cut: bool):
    n = rng.choice([1, 1, 1, 2, 3])
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 300)))
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"[{rng.getrandbits(48):x}] {words}"}],
        "max_tokens": rng.randint(1, 128),
        "temperature": rng.choice([0, 0.7, 1.0]),
        "n": n,
        "stream": True,
    }
    if rng.random() < 0.3:
        body["stop"] = rng.sample(STOPS, rng.randint(1, 3))
    t.sent += 1
    cut_after = rng.randint(1, 8) if cut else None
    finished: set[int] = set()
    done, chunks, cid = False, 0, None
    try:
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code == 429:
                t.rejected_429 += 1
                await r.aread()
                return
            if r.status_code != 200:
                t.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    t.errors.append(f"stream error: {chunk['error']}")
                    return
                cid = cid or chunk["id"]
                for ch in chunk["choices"]:
                    if ch.get("finish_reason"):
                        finished.add(ch["index"])
                    if ch["delta"].get("content"):
                        t.tokens += 1
                chunks += 1
                if cut_after is not None and chunks >= cut_after:
                    t.disconnected += 1
                    return  # leaving the block closes the connection mid-stream
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        t.errors.append(f"{type(e).__name__}: {e}")
        return
    if cid is not None:
        t.ids[cid] = t.ids.get(cid, 0) + 1
    if not done or finished != set(range(n)):
        t.lost.append(f"{cid}: done={done} finished={sorted(finished)} of n={n}")
    else:
        t.completed += 1


async def client_loop(url, model, seed, deadline, disconnect, t: Tally):
    rng = random.Random(seed)
    cut = rng.random() < disconnect  # this client cuts its streams
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        while time.monotonic() < deadline:
            await one_request(c, model, rng, t, cut)


async def soak(args, url: str, pid: int) -> dict:
    t = Tally()
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        model = (await c.get("/v1/models")).json()["data"][0]["id"]
    start = time.monotonic()
    deadline = start + args.duration
    samples: list[tuple[float, float]] = []

    async def sample_rss():
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - start, rss_mib(pid)))
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample_rss())
    await asyncio.gather(
        *(client_loop(url, model, i, deadline, args.disconnect, t) for i in range(args.clients))
    )
    wall = time.monotonic() - start
    sampler.cancel()
    # let the server finish what cut clients left (it aborts them) before the audit
    for _ in range(60):
        m = metrics(url)
        if m["llama3_requests_running"] == 0 and m["llama3_requests_waiting"] == 0:
            break
        await asyncio.sleep(1)
    after = [(s, r) for s, r in samples if s >= args.warmup]
    dup = {k: v for k, v in t.ids.items() if v > 1}
    return {
        "clients": args.clients,
        "duration_s": round(wall, 1),
        "sent": t.sent,
        "completed": t.completed,
        "disconnected_by_client": t.disconnected,
        "rejected_429": t.rejected_429,
        "errors": len(t.errors),
        "error_examples": t.errors[:5],
        "lost": len(t.lost),
        "lost_examples": t.lost[:5],
        "duplicated_ids": len(dup),
        "content_chunks": t.tokens,
        "metrics_after": m,
        "rss_mib_first": samples[0][1] if samples else None,
        "rss_mib_peak": max((r for _, r in samples), default=None),
        "rss_mib_last": samples[-1][1] if samples else None,
        "rss_slope_mib_per_min_after_warmup": round(slope_mib_per_min(after), 3),
    }


def main(argv: list[str] | None = None) -> int:
    from llama3.registry import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="GGUF / checkpoint (default SmolLM2)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--warmup", type=float, default=60, help="seconds before the RSS slope counts")
    p.add_argument("--disconnect", type=float, default=0.2, help="share of clients that cut")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument(
        "serve_args",
        nargs=argparse.REMAINDER,
        help="after --: more `llama3 serve` flags (e.g. -- --kv-cache-memory 256MiB)",
    )
    args = p.parse_args(argv)
    model = args.model or default_model_path()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    log = tempfile.TemporaryFile()
    argv = [sys.executable, "-m", "llama3", "serve", "--model", str(model), "--quiet"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    argv += [a for a in args.serve_args if a != "--"]
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                log.seek(0)
                sys.exit(f"llama3 serve exited:\n{log.read().decode()[-2000:]}")
            time.sleep(0.5)
        result = asyncio.run(soak(args, url, server.pid))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    result["model"] = model.name
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads"
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = not result["errors"] and not result["lost"] and not result["duplicated_ids"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
