"""`llama3 chat`: console chat that streams tokens as they are generated and keeps the conversation.

With stdin not a terminal, each input line is one user turn and only the answers are printed, so
`echo hi | llama3 chat` works in scripts. When the next turn would not fit the context, the oldest
turns after the system prompt are dropped with a notice on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..generation.llama import Llama
from ..generation.params import SamplingParams
from .args import add_model_arguments, add_sampling_arguments, load_llama, sampling_params

DIM, RESET = "\033[2m", "\033[0m"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--system", help="system prompt")


def fit_history(llm: Llama, messages: list[dict], reserve: int) -> tuple[list[int], int]:
    """Prompt ids for `messages`, dropping the oldest non-system turns until `reserve` tokens fit.

    Returns (prompt ids, number of messages dropped); mutates `messages`.
    """
    dropped = 0
    while True:
        prompt = llm.formatter.encode_dialog_prompt(messages)
        first = 1 if messages and messages[0]["role"] == "system" else 0
        if len(prompt) + reserve <= llm.max_seq_len or len(messages) - first <= 1:
            return prompt, dropped
        del messages[first]
        dropped += 1


def answer(
    llm: Llama, prompt: list[int], params: SamplingParams, out, interactive: bool
) -> tuple[str, int, float, bool]:
    """Stream one answer to `out`. Returns (text, tokens, seconds, interrupted)."""
    text, n, t0 = [], 0, time.perf_counter()
    stream = llm.stream([prompt], params)
    try:
        for ev in stream:
            n += 1
            if ev.text:
                text.append(ev.text)
                out.write(ev.text)
                out.flush()
    except KeyboardInterrupt:
        stream.close()
        return "".join(text), n, time.perf_counter() - t0, True
    return "".join(text), n, time.perf_counter() - t0, False


def run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    llm = load_llama(args)
    params = sampling_params(args)
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    reserve = min(params.max_tokens or 512, llm.max_seq_len // 4)
    if interactive:
        print(
            f"{DIM}llama3 chat - {llm.loaded.checkpoint.path.name if llm.loaded else 'model'}; Ctrl-D to quit{RESET}"
        )
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            if interactive:
                print()
            return 0
        if not interactive and line == "":
            return 0
        line = line.strip()
        if not line:
            continue
        if interactive and line in ("/exit", "/quit"):
            return 0
        messages.append({"role": "user", "content": line})
        prompt, dropped = fit_history(llm, messages, reserve)
        if dropped:
            print(
                f"{DIM}[dropped {dropped} oldest message(s) to fit the {llm.max_seq_len}-token context]{RESET}",
                file=sys.stderr,
            )
        text, n, secs, interrupted = answer(llm, prompt, params, sys.stdout, interactive)
        messages.append({"role": "assistant", "content": text})
        if interrupted:
            print(" [interrupted]")
        else:
            print()
        if interactive:
            rate = n / secs if secs > 0 else 0.0
            used = len(prompt) + n
            print(
                f"{DIM}[{n} tokens, {rate:.1f} tok/s, context {used}/{llm.max_seq_len}]{RESET}",
                file=sys.stderr,
            )
