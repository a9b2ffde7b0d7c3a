"""`llama3 convert SRC --to meta|hf|gguf --out PATH`: convert and re-shard checkpoints.

    llama3 convert Meta-Llama-3-70B/ --to meta --shards 2 --aime-names --out 70B-2gpu/
    llama3 convert Meta-Llama-3.1-8B/original --to hf --out Llama-3.1-8B-hf/ --max-shard-size 5GB
    llama3 convert Llama-3.1-8B-hf/ --to gguf --dtype q8_0 --out llama-3.1-8b-q8_0.gguf

Every option is checked (and the output must be new) before a byte is read; bad input is one
`error: … (hint: …)` line. Progress goes to stderr (one line per output file, redrawn in place on
a terminal); the last line, on stdout, names the output and its size.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from ..errors import InvalidRequestError
from ..utils.progress import format_bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src",
        nargs="?",
        metavar="SRC",
        help="a Meta directory (consolidated.NN.pth or merged.*GPUs.*.pth), a Hugging Face "
        "directory or a .gguf file",
    )
    p.add_argument("--to", help="output format: meta, hf or gguf")
    p.add_argument("--out", help="a new directory (meta, hf) or a new .gguf file")
    p.add_argument(
        "--dtype", help="f32, f16, bf16, or q8_0 (GGUF only); default: the source's dtype"
    )
    p.add_argument("--shards", help="Meta: model-parallel shard count (default 1)")
    p.add_argument(
        "--aime-names",
        action="store_true",
        help="Meta: name shards merged.{N}GPUs.{i:02d}.pth (AIME) instead of consolidated.NN.pth",
    )
    p.add_argument(
        "--max-shard-size", help='HF: largest safetensors file, e.g. "5GB" (the default)'
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _shards(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidRequestError(
            f"--shards must be a whole number, got {text!r}", "use e.g. --shards 1, 2, 4 or 8"
        ) from None


def run(args: argparse.Namespace) -> int:
    from ..convert import ConvertOptions, convert

    if not args.src:
        raise InvalidRequestError(
            "no source checkpoint given", "llama3 convert SRC --to meta|hf|gguf --out PATH"
        )
    if not args.to:
        raise InvalidRequestError("--to is missing", "add --to meta, --to hf or --to gguf")
    if not args.out:
        raise InvalidRequestError(
            "--out is missing", "add --out DIR (meta, hf) or --out FILE.gguf (gguf)"
        )
    options = ConvertOptions.make(
        args.to,
        args.out,
        dtype=args.dtype,
        shards=_shards(args.shards),
        aime_names=args.aime_names,
        max_shard_size=args.max_shard_size,
    )
    tty = sys.stderr.isatty()
    count, current = 0, None

    def tick(label: str) -> None:
        nonlocal count, current
        count += 1
        file, _, tensor = label.partition(":")
        if tty:
            line = f"\r{file}: {count} tensors written ({tensor[:40]})"
            print(line.ljust(100), end="", file=sys.stderr, flush=True)
        elif file != current:
            print(f"writing {file}", file=sys.stderr, flush=True)
        current = file

    # SIGTERM unwinds like Ctrl-C, so the temporary output is removed rather than left behind.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = convert(args.src, options, on_tensor=tick)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tty and count:
            print(file=sys.stderr)
    summary = {
        "source": str(args.src),
        "source_format": result.source_format,
        "to": result.target,
        "dtype": result.dtype,
        "out": str(result.out),
        "files": [f.name for f in result.files],
        "bytes": result.nbytes,
        "seconds": round(result.seconds, 2),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        n = len(result.files)
        print(
            f"wrote {result.out} ({format_bytes(result.nbytes)}; {result.target}, {result.dtype}, "
            f"{n} weight file{'s' if n != 1 else ''}) from {result.source_format} "
            f"in {summary['seconds']} s"
        )
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
