"""`llama3 aime-worker` behind the real AIME API Server against `llama3 serve` on the same load.

The AIME path: clients log in at /llama3_chat/login and POST /llama3_chat with wait_for_result
(the server queues the job, the worker long-polls it, runs it in its continuous batch and posts
the result). The direct path: the same chat requests as non-streamed POST /v1/chat/completions to
`llama3 serve`. Both load the same GGUF with the same batch size and context and stay up side by
side; each level runs on one path, then on the other (same prompts), on the same CPU threads. For each concurrency level C, max(2*C, 8) requests go through C
concurrent clients (each takes the next request when its previous one ends); reported per level:

- generated tokens/s: sum of generated tokens (AIME's num_generated_tokens, OpenAI's
  usage.completion_tokens) over the level's wall time;
- request latency p50 / p95: request sent to the full answer received.

Prompts start with a distinct random id (no prefix cache can answer them) and ask for a long
story, so requests run to --max-tokens; temperature 0.

    python bench/aime_bench.py [--model PATH] [--concurrency 1,8,32] [--max-tokens 32]
        [--threads 2] [--json OUT]

Needs the AIME server's venv (.venv-aime, made by `bash .ci/setup-aime.sh`) and ../shared/aime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
AIME = REPO.parent / "shared" / "aime"
AIME_PYTHON = REPO / ".venv-aime" / "bin" / "python"
CFG = AIME / "config" / "endpoints" / "llama3_chat" / "aime_api_endpoint.cfg"
TOPICS = ("a lighthouse keeper", "a city where it rains upwards", "two robots baking bread")
MAX_SEQ_LEN = 512
START_TIMEOUT_S = 300.0
SETTLE_S = 1.0  # let the last level's busy threads go idle


@dataclass
class Level:
    path: str
    concurrency: int
    requests: int
    wall_s: float
    tokens: int
    tokens_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keys() -> tuple[str, str, str]:
    """(worker key, client user, client key) from the endpoint config the server runs with."""
    import tomllib

    cfg = tomllib.loads(CFG.read_text())
    (user, key), *_ = cfg["CLIENTS"]["authorization_keys"].items()
    return cfg["WORKER"]["auth_key"], user, key


def spawn(argv: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(check, what: str, log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.3)
    log.seek(0)
    raise SystemExit(f"{what} did not come up:\n{log.read().decode(errors='replace')[-3000:]}")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def prompts(n: int, rng: random.Random) -> list[str]:
    return [
        f"[{rng.getrandbits(48):012x}-{i}] Write a long story about {TOPICS[i % len(TOPICS)]}."
        for i in range(n)
    ]


async def run_level(path: str, send, concurrency: int, max_tokens: int, rng) -> Level:
    todo = prompts(max(2 * concurrency, 8), rng)
    latencies: list[float] = []
    tokens = errors = 0

    async def client_loop() -> None:
        nonlocal tokens, errors
        while todo:
            prompt = todo.pop()
            t0 = time.perf_counter()
            try:
                n = await send(prompt, max_tokens)  # not `tokens += await`: that loses updates
            except Exception as e:  # counted, and the first few shown
                errors += 1
                if errors <= 3:
                    print(f"  {path}: request failed: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            tokens += n
            latencies.append(time.perf_counter() - t0)

    n = len(todo)
    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return Level(
        path,
        concurrency,
        n,
        round(wall, 2),
        tokens,
        round(tokens / wall, 1),
        round(percentile(latencies, 0.5), 2) if latencies else float("nan"),
        round(percentile(latencies, 0.95), 2) if latencies else float("nan"),
        errors,
    )


@contextlib.asynccontextmanager
async def aime_path(args, env, slots: int):
    """The AIME server and our worker on it; yields send(prompt, max_tokens) -> tokens."""
    worker_key, user, client_key = keys()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    slog = tempfile.TemporaryFile()
    wlog = tempfile.TemporaryFile()
    senv = dict(env, PYTHON=str(AIME_PYTHON))
    server = spawn(["bash", str(AIME / "start-server.sh"), str(port), "--hide_logging"], senv, slog)
    worker = None
    try:
        status = {"auth": "bench", "job_type": "llama3", "auth_key": worker_key}
        wait_until(
            lambda: httpx.post(f"{url}/worker_check_server_status", json=status).status_code == 200,
            "the AIME server",
            slog,
        )
        worker = spawn(
            [sys.executable, "-m", "llama3", "aime-worker", "--api-server", url]
            + ["--api-auth-key", worker_key, "--model", str(args.model), "--quiet"]
            + ["--max-batch", str(slots), "--max-seq-len", str(MAX_SEQ_LEN)],
            env,
            wlog,
        )

        def ready() -> bool:
            wlog.seek(0)
            return b"serving" in wlog.read()

        wait_until(ready, "the AIME worker", wlog)
        limits = httpx.Limits(max_connections=slots + 8)
        async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as c:
            login = await c.get("/llama3_chat/login", params={"user": user, "key": client_key})
            session = login.json()["client_session_auth_key"]

            async def send(prompt: str, max_tokens: int) -> int:
                body = {
                    "chat_context": json.dumps([{"role": "user", "content": prompt}]),
                    "temperature": 0.0,
                    "max_gen_tokens": max_tokens,
                    "client_session_auth_key": session,
                    "wait_for_result": True,
                }
                r = (await c.post("/llama3_chat", json=body)).json()
                if not r.get("success") or r.get("error"):
                    raise RuntimeError(str(r)[:200])
                return int(r["num_generated_tokens"])

            await send("Hello", 4)  # warm-up
            yield send
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


@contextlib.asynccontextmanager
async def serve_path(args, env, slots: int):
    """`llama3 serve`; yields send(prompt, max_tokens) -> tokens."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    argv = [sys.executable, "-m", "llama3", "serve", "--model", str(args.model), "--quiet"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(slots)]
    argv += ["--max-model-len", str(MAX_SEQ_LEN)]
    server = spawn(argv, env, log)
    try:
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "llama3 serve", log)
        limits = httpx.Limits(max_connections=slots + 8)
        async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as c:
            model_id = (await c.get("/v1/models")).json()["data"][0]["id"]

            async def send(prompt: str, max_tokens: int) -> int:
                body = {
                    "model": model_id,
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0,
                    "max_tokens": max_tokens,
                }
                r = await c.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                return int(r.json()["usage"]["completion_tokens"])

            await send("Hello", 4)  # warm-up
            yield send
    finally:
        stop(server)


async def bench(args, env, levels: list[int]) -> list[Level]:
    """Both paths stay up; each level runs on one, then the other, on the same prompts, so a
    change in the machine's load hits both alike."""
    slots = max(levels)
    rows = []
    async with aime_path(args, env, slots) as aime, serve_path(args, env, slots) as serve:
        for n in levels:
            for name, send in (("aime", aime), ("serve", serve)):
                await asyncio.sleep(SETTLE_S)
                rows.append(await run_level(name, send, n, args.max_tokens, random.Random(n)))
    return rows


def table(rows: list[Level]) -> str:
    head = "| path | clients | requests | tokens | wall s | tokens/s | latency p50 s | p95 s |"
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r.path} | {r.concurrency} | {r.requests} | {r.tokens} | {r.wall_s} | "
            f"{r.tokens_per_s} | {r.latency_p50_s} | {r.latency_p95_s} |"
            + (f" {r.errors} errors" if r.errors else "")
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from llama3.registry import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="GGUF / checkpoint (default SmolLM2)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    args.model = args.model or default_model_path()
    if not AIME_PYTHON.exists():
        raise SystemExit(f"{AIME_PYTHON} missing: run `bash .ci/setup-aime.sh` first")
    levels = [int(x) for x in args.concurrency.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows = asyncio.run(bench(args, env, levels))
    print(
        f"model {args.model.name}, max_tokens {args.max_tokens}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(table(sorted(rows, key=lambda r: (r.concurrency, r.path))))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
