"""`llama3 bench [MODEL]`: load, prefill, decode, TTFT and peak RSS, for this engine and side by
side for llama.cpp (llama-cpp-python) and transformers on the same weights, in one run."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import InvalidRequestError
from ..quant import LOAD_CHOICES, SCHEMES_HELP


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be 1 or more")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_pos", nargs="?", metavar="MODEL", help="checkpoint (or use --model)")
    p.add_argument("--model", "-m", help="checkpoint (default: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--engines",
        default="llama3,llama.cpp,transformers",
        help="comma-separated: llama3, llama.cpp, transformers (default: all three)",
    )
    p.add_argument("--threads", type=int, help="threads for every engine (default: all cores)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prefill prompt length (512)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per run (128)")
    p.add_argument("--batch", type=_ints, default=[1, 8], help="decode batch sizes (1,8)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per figure (3)")
    p.add_argument(
        "--quantize", choices=LOAD_CHOICES, help="quantize our model at load: " + SCHEMES_HELP
    )
    p.add_argument("--compile", action="store_true", help="our decode step with torch.compile")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..bench.report import render
    from ..bench.run import BenchConfig, run_bench
    from ..bench.worker import ENGINES
    from ..checkpoint import read_checkpoint
    from ..loader import load_tokenizer_for
    from ..registry import resolve_model

    if args.model_pos and args.model:
        raise InvalidRequestError("MODEL given twice", "pass it either first or with --model")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise InvalidRequestError(
            f"unknown engine {', '.join(bad) or '(none)'}", f"choose from {', '.join(ENGINES)}"
        )
    # a decode rate needs two tokens: the first one's time is the TTFT
    for flag, least in (("--prompt-tokens", 1), ("--new-tokens", 2), ("--runs", 1)):
        if getattr(args, flag[2:].replace("-", "_")) < least:
            raise InvalidRequestError(f"{flag} is too small", f"pass {flag} {least} or more")
    path = resolve_model(args.model_pos or args.model)
    tokenizer = load_tokenizer_for(read_checkpoint(path))
    cfg = BenchConfig(
        model=path,
        engines=engines,
        threads=args.threads or os.cpu_count() or 1,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        batches=args.batch,
        runs=args.runs,
        quantize=args.quantize,
        compile=args.compile,
    )

    def progress(r: dict) -> None:
        if not args.json:
            state = "failed" if "error" in r else "done"
            print(f"  {r['engine']}: {state}", file=sys.stderr, flush=True)

    report = run_bench(cfg, tokenizer, on_result=progress)
    print(json.dumps(report) if args.json else render(report))
    return 0
