"""`llama3 aime-worker`: serve the model as a worker of an AIME API Server.

The auth key and job type are checked with the server before the model loads, so a wrong key is a
one-line error within a second, not after minutes of loading. Under torchrun only rank 0 gets past
`load_llama`, and only rank 0 talks HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import sys
from urllib.parse import urlparse

from ..errors import InvalidRequestError
from .args import add_model_arguments, add_sampling_arguments, load_llama


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AIME API Server")
    g.add_argument(
        "--api-server", required=True, metavar="URL", help="the server, e.g. http://host:7777"
    )
    g.add_argument(
        "--api-auth-key",
        required=True,
        metavar="KEY",
        help="the worker key: [WORKER] auth_key of the endpoint's config",
    )
    g.add_argument("--job-type", default="llama3", help="the endpoint's job type (default llama3)")
    g.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="jobs computed at once; new jobs join as slots free up (default 16)",
    )
    g.add_argument("--worker-name", help="name shown by the server (default: host#pid_NxGPU)")
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.epilog = (
        "The sampling flags apply only to fields a job leaves out (the llama3_chat endpoint "
        "fills them all); --max-tokens defaults to 2000 there."
    )


def _check(args: argparse.Namespace) -> None:
    u = urlparse(args.api_server)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise InvalidRequestError(
            f"--api-server {args.api_server!r} is not an http(s) URL",
            "write it like http://127.0.0.1:7777",
        )
    if args.max_batch < 1:
        raise InvalidRequestError(f"--max-batch must be at least 1, got {args.max_batch}", "use 1+")
    if not args.api_auth_key:
        raise InvalidRequestError("--api-auth-key is empty", "pass the endpoint's worker key")


def _worker_name(args: argparse.Namespace, gpu_name: str, num_gpus: int) -> str:
    if args.worker_name:
        return args.worker_name
    # AIME's form host#N_<gpus>x<gpu>; N is our pid, so two workers on one host stay apart.
    return f"{socket.gethostname()}#{os.getpid()}_{num_gpus}x{gpu_name.replace(' ', '_')}"


def _size(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def run(args: argparse.Namespace) -> int:
    _check(args)
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..aime import AimeClient, AimeWorker, Defaults, WorkerConfig, WorkerIdentity
    from ..engine.async_engine import AsyncLLMEngine
    from ..engine.engine import LLMEngine, default_engine_config
    from ..registry import resolve_model

    path = resolve_model(args.model)
    model_name = path.stem if path.suffix == ".gguf" else path.name
    who = WorkerIdentity(
        name=args.worker_name or "",
        auth_key=args.api_auth_key,
        job_type=args.job_type,
        version=f"llama3 aime-worker {__version__}",
        worker_version=__version__,
        framework_version=torch.__version__,
        pytorch_version=torch.__version__,
        model_label=model_name,
        model_repo_name=model_name,
    )
    client = AimeClient(args.api_server, who)
    try:
        if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks never talk HTTP
            await client.check_authorized()
        # Loaded on this thread: nothing else runs yet, and Ctrl-C interrupts the load at once.
        llm = load_llama(args, max_batch_size=args.max_batch)
        model = llm.model
        on_gpu = model.device.type == "cuda"
        gpu = torch.cuda.get_device_name(model.device) if on_gpu else "CPU"
        gpus = int(os.environ.get("WORLD_SIZE", "1")) if on_gpu else 1
        who = dataclasses.replace(
            who,
            name=_worker_name(args, gpu, gpus),
            gpu_name=gpu,
            num_gpus=gpus,
            model_size=_size(model.params.num_parameters()),
            model_quantization=args.quantize or str(model.dtype).removeprefix("torch."),
        )
        client.identify(who)
        per_token = model.params.kv_bytes_per_token(model.dtype.itemsize)
        cfg = default_engine_config(
            model,
            max_num_seqs=args.max_batch,
            max_model_len=llm.max_seq_len,
            # Llama.load sized max_seq_len so max_batch full sequences fit: reserve exactly that.
            kv_cache_bytes=args.max_batch * llm.max_seq_len * per_token,
        )
        engine = AsyncLLMEngine(LLMEngine(model, llm.tokenizer, cfg))
        defaults = Defaults(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_gen_tokens=args.max_tokens or Defaults.max_gen_tokens,
            seed=args.seed,
        )
        worker = AimeWorker(
            engine,
            llm.tokenizer,
            lambda: llm.formatter,
            client,
            WorkerConfig(args.max_batch, model_name, defaults),
        )
        print(
            f"llama3 aime-worker: {who.name} serving {model_name} for job type "
            f"{who.job_type!r} at {client.url} (max batch {args.max_batch}, "
            f"context {cfg.model_len} tokens)",
            file=sys.stderr,
            flush=True,
        )
        return await worker.run()
    finally:
        await client.aclose()
