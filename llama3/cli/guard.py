"""`llama3 guard`: classify a conversation with a Llama Guard model; and the `--guard*` flags that
`llama3 chat` and `llama3 serve` share.

Input (a file, or stdin when none or `-`): a JSON list of OpenAI-style messages (or an object
with "messages"), else plain text taken as one user message. Prints the verdict (`safe`, or
`unsafe: S2 (Non-Violent Crimes)`), or JSON with `--json`; `--show-prompt` prints the exact
prompt sent. Exit code 0 either way (the verdict is the output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InvalidRequestError
from ..guard.settings import DEFAULT_MESSAGE, GuardSettings
from .args import add_model_arguments, load_llama


def _version(text: str) -> int:
    if text not in ("2", "3"):
        raise argparse.ArgumentTypeError("use 2 or 3")
    return int(text)


def add_selection_arguments(g) -> None:  # type: ignore[no-untyped-def]
    g.add_argument(
        "--guard-version",
        type=_version,
        help="Llama Guard 2 or 3 (default: read from the model's chat template / config)",
    )
    g.add_argument(
        "--guard-categories",
        metavar="SPEC",
        help="change the category list: comma-separated -S6 (exclude) and +Name or "
        "+Name=description (add); renumbered S1..Sn. Write it with '=': "
        "--guard-categories=-S6,+Profanity.",
    )


def add_guard_arguments(p: argparse.ArgumentParser, *, streaming: bool = True) -> None:
    """The flags that put a Llama Guard filter around `chat` and `serve`."""
    g = p.add_argument_group("safety filter (Llama Guard)")
    g.add_argument("--guard", metavar="MODEL", help="a Llama Guard 2/3 checkpoint (any format)")
    add_selection_arguments(g)
    g.add_argument(
        "--guard-check",
        default="input,output",
        help="what is classified: input (user turns), output (answers) or input,output (default)",
    )
    g.add_argument(
        "--guard-action",
        choices=("refuse", "error"),
        default="refuse",
        help="refuse: answer with --guard-message (finish_reason content_filter, default); "
        "error: HTTP 400",
    )
    g.add_argument("--guard-message", default=DEFAULT_MESSAGE, help="the refusal text")
    if streaming:
        g.add_argument(
            "--guard-chunk-tokens",
            type=int,
            default=16,
            help="streamed answers are checked (and released) every N tokens (default 16)",
        )
    g.add_argument("--guard-device", help="device for the guard model (default: as --device)")
    g.add_argument("--guard-dtype", help="dtype for the guard model (default: as --dtype)")
    g.add_argument("--guard-max-seq-len", type=int, help="the guard model's context")


_DEFAULTS = {
    "guard_version": None,
    "guard_categories": None,
    "guard_check": "input,output",
    "guard_action": "refuse",
    "guard_message": DEFAULT_MESSAGE,
    "guard_chunk_tokens": 16,
    "guard_device": None,
    "guard_dtype": None,
    "guard_max_seq_len": None,
}


def guard_settings(args: argparse.Namespace) -> GuardSettings | None:
    if not args.guard:
        given = [k for k, v in _DEFAULTS.items() if getattr(args, k, v) != v]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise InvalidRequestError(
                f"{flag} has no effect without a guard model", "add --guard MODEL"
            )
        return None
    return GuardSettings(
        model=args.guard,
        version=args.guard_version,
        categories=args.guard_categories,
        device=args.guard_device or args.device,
        dtype=args.guard_dtype or args.dtype,
        max_seq_len=args.guard_max_seq_len,
        action=args.guard_action,
        message=args.guard_message,
        stages=tuple(s.strip() for s in args.guard_check.split(",") if s.strip()),
        chunk_tokens=getattr(args, "guard_chunk_tokens", 16),
    )


# ---- llama3 guard ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("input", nargs="?", help="conversation JSON or text file; - or none: stdin")
    p.add_argument(
        "--role",
        choices=("User", "Agent"),
        help="User: the last user turn; Agent: the last answer (default: the last turn's)",
    )
    add_selection_arguments(p)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--show-prompt", action="store_true", help="print the prompt sent to stderr")


def read_conversation(text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if isinstance(data, list):
        return data
    if not text.strip():
        raise InvalidRequestError("the input is empty", "give a conversation JSON or some text")
    return [{"role": "user", "content": text.strip()}]


def run(args: argparse.Namespace) -> int:
    from ..guard import Guard, parse_spec, select

    exclude, add = parse_spec(args.guard_categories)
    select(args.guard_version or 3, exclude, add)  # a bad selection fails before the load
    if args.input in (None, "-"):
        text = sys.stdin.read()
    else:
        path = Path(args.input)
        if not path.is_file():
            raise InvalidRequestError(f"no file {args.input}", "give a conversation file or -")
        text = path.read_text()
    conversation = read_conversation(text)
    guard = Guard(load_llama(args), version=args.guard_version, exclude=exclude, add=add)
    if args.show_prompt:
        print(guard.prompt(conversation, args.role), file=sys.stderr)
    verdict = guard.classify(conversation, args.role)
    if args.json:
        print(json.dumps({"version": guard.version, **verdict.as_dict()}, ensure_ascii=False))
    else:
        print(verdict.summary())
    return 0
