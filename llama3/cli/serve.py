"""`llama3 serve`: the OpenAI-compatible HTTP server with continuous batching and a chat page.

The port is bound here, before anything loads, so a port in use is a one-line error and `--port 0`
picks a free one; the address is printed at once and the model loads while `/health` answers 503.
SIGTERM or Ctrl-C drains: no new connections, running requests finish, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys

from ..errors import InvalidRequestError, Llama3Error
from ..quant import LOAD_CHOICES, SCHEMES_HELP
from ..registry import resolve_model
from .guard import add_guard_arguments, guard_settings

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'512MB', '2GiB', '64m', '1000000' -> bytes (K/M/G/T are powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise InvalidRequestError(
            f"cannot read {text!r} as a size", "write e.g. 512MiB, 2GiB or a number of bytes"
        )
    scale = 1024 ** " kmgt".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * scale)


def parse_lora(text: str) -> tuple[str, str]:
    """'name=path/to/adapter' -> (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH, got {text!r} (e.g. --lora sql=./adapters/sql)"
        )
    return name.strip(), path.strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", help="checkpoint dir or .gguf file (default: SmolLM2-135M)")
    g.add_argument("--served-model-name", help="the name clients use (default: the file name)")
    g.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    g.add_argument("--dtype", help="float32, bfloat16, float16")
    g.add_argument(
        "--quantize",
        choices=LOAD_CHOICES,
        help=SCHEMES_HELP,
    )
    g.add_argument(
        "--adapter",
        help="a LoRA adapter folder (llama3 finetune --out, or PEFT's save_pretrained) served "
        "unmerged over the model",
    )
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        type=parse_lora,
        metavar="NAME=PATH",
        help="a LoRA adapter served by name over the base: a request's `model` picks it "
        "(repeatable; more load at run time through POST /v1/load_lora_adapter)",
    )
    g.add_argument(
        "--max-loras",
        type=int,
        metavar="N",
        help="most LoRA adapters loaded at once (--lora and run-time loads; default: no cap); "
        "loading one more is refused until one is unloaded",
    )
    g = p.add_argument_group("engine")
    g.add_argument("--max-num-seqs", type=int, default=16, help="requests in a batch (default 16)")
    g.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=512,
        help="tokens computed per step: decodes + prompt chunks (default 512)",
    )
    g.add_argument("--max-model-len", type=int, help="longest prompt + answer (default: trained)")
    g.add_argument(
        "--kv-cache-memory",
        type=parse_size,
        metavar="SIZE",
        help="KV-cache size, e.g. 2GiB (default: a quarter of free memory, at most what is needed)",
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    g.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted bearer key (repeatable; also $LLAMA3_API_KEY)",
    )
    g.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    g.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may take, 0 = no limit (default 600)",
    )
    g.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        help="CORS origin allowed to call the API from a browser (repeatable; '*' for any)",
    )
    g.add_argument(
        "--max-body-size", type=parse_size, default="4MiB", help="larger bodies get 413 (4MiB)"
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no per-request log lines")
    add_guard_arguments(p)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise Llama3Error(
            f"cannot listen on {host}:{port}: {e.strerror}",
            "pick another port with --port (0 picks a free one)",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _logging(quiet: bool) -> None:
    log = logging.getLogger("llama3.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def run(args: argparse.Namespace) -> int:
    import uvicorn

    class _DrainingServer(uvicorn.Server):
        """After a drain, SIGTERM is a clean exit (0): uvicorn would re-raise the signal."""

        def handle_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    from ..serve.app import create_app
    from ..serve.state import ServerConfig

    keys = list(args.api_key)
    if os.environ.get("LLAMA3_API_KEY"):
        keys.append(os.environ["LLAMA3_API_KEY"])
    for name in ("max_num_seqs", "max_queue", "max_num_batched_tokens"):
        if getattr(args, name) < 1:
            raise InvalidRequestError(
                f"--{name.replace('_', '-')} must be at least 1", "use 1 or more"
            )
    if args.max_loras is not None and args.max_loras < 1:
        raise InvalidRequestError("--max-loras must be at least 1", "use 1 or more")
    if args.max_loras is not None and len(args.lora) > args.max_loras:
        raise InvalidRequestError(
            f"{len(args.lora)} --lora adapters exceed --max-loras {args.max_loras}",
            f"raise --max-loras to {len(args.lora)} or pass fewer --lora",
        )
    names = [n for n, _ in args.lora]
    dup = next((n for n in names if names.count(n) > 1 or n == args.served_model_name), None)
    if dup is not None:
        raise InvalidRequestError(
            f"--lora name {dup!r} is used twice", "give each adapter (and the model) its own name"
        )
    config = ServerConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        adapter=args.adapter,
        loras=tuple(args.lora),
        max_loras=args.max_loras,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=max(args.max_num_batched_tokens, args.max_num_seqs),
        max_model_len=args.max_model_len,
        kv_cache_bytes=args.kv_cache_memory,
        api_keys=tuple(keys),
        max_queue=args.max_queue,
        request_timeout=args.request_timeout or None,
        allowed_origins=tuple(args.allowed_origin),
        max_body_bytes=args.max_body_size,
        guard=guard_settings(args),
    )
    path = resolve_model(args.model)
    _logging(args.quiet)
    sock = _bind(args.host, args.port)
    failed: list[Exception] = []

    server: uvicorn.Server | None = None

    def on_load_error(e: Exception) -> None:
        failed.append(e)
        if server is not None:
            server.should_exit = True

    app = create_app(config, model_path=path, on_load_error=on_load_error)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"llama3 serve: http://{shown}:{port} (chat page at /, OpenAI API at /v1); loading {path}",
        file=sys.stderr,
        flush=True,
    )
    server = _DrainingServer(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    server.run(sockets=[sock])
    if failed:
        e = failed[0]
        if isinstance(e, Llama3Error):
            raise e
        raise Llama3Error(f"could not load {path}: {type(e).__name__}: {e}")
    return 0
