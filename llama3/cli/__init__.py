"""The `llama3` command: verb dispatch and one error boundary.

Each verb module exposes `add_arguments(parser)` and `run(args) -> int`. A `Llama3Error` becomes one
line `error: … (hint: …)` with exit code 2 for usage errors and 1 for runtime failures; a traceback
is printed only with `--debug`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from ..errors import Llama3Error

VERBS = {
    "chat": "interactive console chat that streams tokens (pipe mode when stdin is not a terminal)",
    "generate": "text completion for base models and scripting",
    "inspect": "the doctor: format, config, memory, tokenizer, stop set, chat template, pitfalls",
    "tokenize": "show the token ids and pieces of a text",
    "download": "download Meta checkpoints (signed URL) or Hugging Face repos",
    "quantize": "write an int8 or int4 checkpoint that loads quantized",
    "perplexity": "perplexity over a text, and KL divergence against a reference model",
    "serve": "OpenAI-compatible HTTP server with continuous batching and a browser chat page",
    "bench": "load/prefill/decode speed and memory, side by side with llama.cpp and transformers",
    "convert": "convert and re-shard checkpoints between Meta, Hugging Face and GGUF formats",
    "finetune": "LoRA / QLoRA fine-tuning on JSONL chat data; writes a PEFT adapter",
    "merge": "fold a LoRA adapter into the model's weights and write a new checkpoint",
    "guard": "classify a conversation with a Llama Guard 2/3 safety model",
    "aime-worker": "serve the model as a worker of an AIME API Server (continuous batching)",
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="llama3", description="Run Meta Llama 3-family models.")
    parser.add_argument("--debug", action="store_true", help="print tracebacks and debug logs")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        mod = importlib.import_module(f".{name.replace('-', '_')}", __name__)
        p = sub.add_parser(name, help=VERBS[name], description=VERBS[name])
        mod.add_arguments(p)
        p.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s"
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        from ..parallel import launch, world_size_from_env

        if world_size_from_env() > 1:  # under torchrun
            if args.verb in launch.VERBS:
                return launch.run(args)
            if args.verb in launch.DATA_PARALLEL:
                return int(args.run(args) or 0)  # every rank trains its share
            if int(os.environ.get("RANK", "0")) != 0:
                return 0  # a verb without a model: rank 0 alone runs it
        return int(args.run(args) or 0)
    except Llama3Error as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
