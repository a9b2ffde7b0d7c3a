"""`llama3 generate`: complete prompts given on the command line, streaming the text to stdout."""

from __future__ import annotations

import argparse
import json
import sys

from .args import add_model_arguments, add_sampling_arguments, load_llama, sampling_params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="+", help="prompt text(s)")
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument(
        "--chat", action="store_true", help="wrap each prompt as a user turn in the chat format"
    )
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")


def run(args: argparse.Namespace) -> int:
    llm = load_llama(args, max_batch_size=len(args.prompts))
    params = sampling_params(args, stop=tuple(args.stop), logprobs=0 if args.json else None)
    prompts = [
        llm.formatter.encode_dialog_prompt([{"role": "user", "content": p}]) if args.chat else p
        for p in args.prompts
    ]
    if args.json:
        for r in llm.complete(prompts, params):
            print(
                json.dumps(
                    {
                        "text": r.text,
                        "tokens": r.tokens,
                        "logprobs": r.logprobs,
                        "finish_reason": r.finish_reason,
                    }
                )
            )
        return 0
    for prompt in prompts:
        for ev in llm.stream([prompt], params):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0
