"""`llama3 quantize [MODEL] --to int8|int4[-gN] --out DIR`: write a checkpoint whose projections
are stored quantized. It loads back with `llama3 chat DIR` (and every other verb) quantized,
without a float copy, in a fraction of the time."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import InvalidRequestError
from ..quant import SCHEMES, SCHEMES_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_pos", nargs="?", metavar="MODEL", help="checkpoint (or use --model)")
    p.add_argument("--model", "-m", help="checkpoint (default: SmolLM2-135M-Instruct)")
    p.add_argument("--to", required=True, choices=SCHEMES, help=SCHEMES_HELP)
    p.add_argument("--out", required=True, type=Path, help="a new directory to write")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..loader import load
    from ..quant.save import WEIGHTS, check_out_dir, save_quantized
    from ..registry import resolve_model

    if args.model_pos and args.model:
        raise InvalidRequestError("MODEL given twice", "pass it either first or with --model")
    out = args.out.expanduser()
    check_out_dir(out)  # before the minutes a load can take, not after
    path = resolve_model(args.model_pos or args.model)
    t0 = time.perf_counter()
    lm = load(path, device="cpu", quantize=args.to, progress=not args.json)
    written = save_quantized(lm, out)
    size = (written / WEIGHTS).stat().st_size
    result = {
        "model": str(path),
        "scheme": args.to,
        "out": str(written),
        "bytes": size,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"wrote {written} ({args.to}, {size / 2**20:.1f} MiB) in {result['seconds']} s; "
            f"run it with: llama3 chat {written}"
        )
    return 0
