"""`llama3 generate`: text completion for base models and scripting.

Prompts come from the command line or `--prompts-file` (one per line, run in batches). Text streams
to stdout; `--json` prints one object per prompt with text, token ids, logprobs, finish reason and
timings instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidRequestError
from ..generation.params import GenerationResult, SamplingParams
from .args import (
    add_adapter_argument,
    add_compile_argument,
    add_model_arguments,
    add_sampling_arguments,
    load_llama,
    sampling_params,
)
from .structured import add_structured_arguments, guided_from_args

if TYPE_CHECKING:
    from ..generation.llama import Llama


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="*", help="prompt text(s)")
    p.add_argument("--prompts-file", help="a file with one prompt per line")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default 8)")
    add_model_arguments(p)
    add_adapter_argument(p)
    add_compile_argument(p)
    add_sampling_arguments(p)
    p.add_argument(
        "--chat", action="store_true", help="wrap each prompt as a user turn in the chat format"
    )
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--logprobs",
        type=int,
        metavar="N",
        help="return logprobs with N alternatives (0 = chosen only)",
    )
    p.add_argument(
        "--echo", action="store_true", help="include the prompt (and its logprobs) in the output"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    add_structured_arguments(p)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidRequestError(
                f"cannot read --prompts-file {args.prompts_file}: {e}", "pass a UTF-8 text file"
            ) from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise InvalidRequestError(
            "no prompt given", 'pass a prompt: llama3 generate "Once upon a time"'
        )
    if args.batch_size < 1:
        raise InvalidRequestError(
            f"--batch-size must be at least 1, got {args.batch_size}", "use 1 or more"
        )
    return prompts


def _encode(llm: Llama, prompt: str, chat: bool) -> list[int]:
    return (
        llm.formatter.encode_dialog_prompt([{"role": "user", "content": prompt}])
        if chat
        else llm.tokenizer.encode_prompt(prompt)
    )


def _record(llm: Llama, r: GenerationResult, seconds: float, echo: bool) -> dict:
    tok = llm.tokenizer
    rec = {
        "prompt": tok.decode(r.prompt_tokens),
        "text": (tok.decode(r.prompt_tokens) if echo else "") + r.text,
        "prompt_tokens": r.prompt_tokens,
        "tokens": r.tokens,
        "finish_reason": r.finish_reason,
        "timings": {
            "seconds": round(seconds, 4),
            "tokens_per_second": round(len(r.tokens) / seconds, 2) if seconds else None,
        },
    }
    if r.logprobs is not None:
        rec["logprobs"] = r.logprobs
        if r.top_logprobs is not None:
            rec["top_logprobs"] = [
                [{"token": t, "text": tok.decode([t]), "logprob": lp} for t, lp in alt]
                for alt in r.top_logprobs
            ]
    if r.prompt_logprobs is not None:
        rec["prompt_logprobs"] = r.prompt_logprobs
    return rec


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    params = sampling_params(  # checked before the load: a bad flag fails at once
        args,
        stop=tuple(args.stop),
        logprobs=args.logprobs,
        echo=args.echo and args.logprobs is not None,
        guided=guided_from_args(args),
    )
    llm = load_llama(args, max_batch_size=min(args.batch_size, len(prompts)))
    ids = [_encode(llm, p, args.chat) for p in prompts]
    if len(ids) == 1 and not args.json:  # one prompt: stream it as it is generated
        if args.echo:
            sys.stdout.write(prompts[0])
        _stream_one(llm, ids[0], params)
        return 0
    for start in range(0, len(ids), args.batch_size):
        t0 = time.perf_counter()
        results = llm.complete(ids[start : start + args.batch_size], params)
        secs = time.perf_counter() - t0
        for prompt, r in zip(prompts[start:], results):
            if args.json:
                print(json.dumps(_record(llm, r, secs, args.echo), ensure_ascii=False), flush=True)
            else:
                print((prompt if args.echo else "") + r.text, flush=True)
    return 0


def _stream_one(llm: Llama, ids: list[int], params: SamplingParams) -> None:
    for ev in llm.stream([ids], params):
        sys.stdout.write(ev.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
