"""`llama3 chat`: console chat that streams tokens as they are generated and keeps the conversation.

In-chat commands (/help lists them) change the system prompt, sampling settings and history. Ctrl-C
stops the answer being generated and keeps what was said; Ctrl-C at an empty prompt or Ctrl-D quits.
When the next turn would not fit the context, the oldest turns after the system prompt are dropped
with a notice. With stdin not a terminal, each input line is one user turn and only the answers are
printed, so `echo hi | llama3 chat` works in scripts.

With `--tools tools.json` (an OpenAI `tools` list) the model may call a tool: the call is printed
as `[tool call] name {"arg": ...}` and the next lines typed (up to an empty line or end of input)
are the tool's result, sent back as a tool message; the model then answers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import InvalidRequestError, Llama3Error
from ..generation.params import SamplingParams
from .args import (
    add_adapter_argument,
    add_compile_argument,
    add_model_arguments,
    add_sampling_arguments,
    load_llama,
    sampling_params,
)
from .guard import add_guard_arguments, guard_settings

if TYPE_CHECKING:
    from ..generation.llama import Llama
    from ..guard import Guard, GuardSettings

DIM, RESET = "\033[2m", "\033[0m"
#: answers in a row that may call tools before the user speaks again
MAX_TOOL_ROUNDS = 5
ROLES = ("system", "user", "assistant", "tool", "ipython")
#: /set keys -> the type each value parses as
SETTABLE = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "max_tokens": int,
    "seed": int,
    "repetition_penalty": float,
    "frequency_penalty": float,
    "presence_penalty": float,
}
HELP = """commands:
  /help                 this help
  /reset                forget the conversation (keeps the system prompt)
  /system TEXT          set the system prompt (empty TEXT removes it)
  /set KEY=VALUE ...    sampling: {keys}
  /save FILE            save the conversation as OpenAI-style JSON messages
  /load FILE            load a conversation saved with /save
  /stats                context used, tokens and speed so far
  /exit                 quit (also Ctrl-D, or Ctrl-C at an empty prompt)
Ctrl-C while an answer streams stops it and keeps the partial answer."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_adapter_argument(p)
    add_compile_argument(p)
    add_sampling_arguments(p)
    p.add_argument("--system", help="system prompt")
    p.add_argument(
        "--tools",
        metavar="FILE",
        help="a JSON file with an OpenAI tools list: the model may call them, you paste results",
    )
    add_guard_arguments(p, streaming=False)


@dataclasses.dataclass
class Stats:
    turns: int = 0
    generated: int = 0
    seconds: float = 0.0
    last_rate: float = 0.0
    context: int = 0


class ChatSession:
    """The conversation, settings and commands; I/O goes through `out` (answers) and `err` (status)."""

    def __init__(
        self,
        llm: Llama,
        params: SamplingParams,
        system: str | None,
        out: TextIO,
        err: TextIO,
        *,
        decorate: bool,
        guard: Guard | None = None,
        guard_settings: GuardSettings | None = None,
        tools: list[Any] | None = None,
        read_line: Callable[[], str | None] | None = None,
    ):
        self.llm, self.params, self.out, self.err, self.decorate = llm, params, out, err, decorate
        #: with a guard, unsafe user turns are refused and unsafe answers replaced
        self.guard, self.guard_settings = guard, guard_settings
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.stats = Stats()
        #: `Tool`s offered to the model; `read_line` gives a pasted tool result line (None: EOF)
        self.tools = tools or []
        self.read_line = read_line or (lambda: None)

    def encode(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        fmt = self.llm.formatter
        if self.tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            from ..tools.prompt import encode_with_tools

            return encode_with_tools(fmt, messages, self.tools)  # with the open header
        return fmt.encode_dialog_prompt(messages, add_generation_prompt=add_generation_prompt)

    # ---- output helpers --------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """A dim status line on stderr (plain in pipe mode)."""
        self.err.write(f"{DIM}{text}{RESET}\n" if self.decorate else f"{text}\n")
        self.err.flush()

    # ---- commands --------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run an in-chat command; False means quit."""
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name in ("exit", "quit"):
            return False
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            self.note(f"unknown command /{name}; /help lists them")
            return True
        try:
            handler(rest)
        except (Llama3Error, OSError, ValueError) as e:
            self.note(f"error: {e}")
        return True

    def _cmd_help(self, _: str) -> None:
        self.note(HELP.format(keys=", ".join(SETTABLE)))

    def recount(self) -> None:
        """Context used by the conversation as it stands (after /reset, /load, /system)."""
        ids = self.encode(self.messages, add_generation_prompt=False) if self.messages else []
        self.stats.context = len(ids)

    def _cmd_reset(self, _: str) -> None:
        self.messages = [m for m in self.messages[:1] if m["role"] == "system"]
        self.recount()
        self.note("conversation cleared")

    def _cmd_system(self, text: str) -> None:
        self.messages = [m for m in self.messages if m["role"] != "system"]
        if text:
            self.messages.insert(0, {"role": "system", "content": text})
        self.recount()
        self.note("system prompt set" if text else "system prompt removed")

    def _cmd_set(self, rest: str) -> None:
        if not rest:
            shown = " ".join(f"{k}={getattr(self.params, k)}" for k in SETTABLE)
            self.note(shown)
            return
        changes = {}
        for item in rest.split():
            key, eq, value = item.partition("=")
            key = key.replace("-", "_")
            if not eq or key not in SETTABLE:
                raise InvalidRequestError(
                    f"cannot set '{item}'", f"use KEY=VALUE with KEY one of {', '.join(SETTABLE)}"
                )
            try:
                changes[key] = (
                    None
                    if value.lower() == "none" and key in ("max_tokens", "seed")
                    else SETTABLE[key](value)
                )
            except ValueError:
                raise InvalidRequestError(
                    f"{key}: '{value}' is not a valid {SETTABLE[key].__name__}", "give a number"
                ) from None
        self.params = dataclasses.replace(self.params, **changes)  # validates
        self.note(" ".join(f"{k}={v}" for k, v in changes.items()))

    def _cmd_save(self, file: str) -> None:
        if not file:
            raise InvalidRequestError("/save needs a file name", "/save chat.json")
        Path(file).write_text(json.dumps(self.messages, indent=2, ensure_ascii=False) + "\n")
        self.note(f"saved {len(self.messages)} messages to {file}")

    def _cmd_load(self, file: str) -> None:
        if not file:
            raise InvalidRequestError("/load needs a file name", "/load chat.json")
        try:
            data = json.loads(Path(file).read_text())
        except json.JSONDecodeError as e:
            raise InvalidRequestError(
                f"{file} is not valid JSON ({e})", "load a file written by /save"
            ) from None
        if not isinstance(data, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in data
        ):
            raise InvalidRequestError(
                f"{file} is not a list of {{role, content}} messages",
                "load a file written by /save",
            )
        self.messages = [{"role": m["role"], "content": m["content"]} for m in data]
        self.recount()
        self.note(f"loaded {len(self.messages)} messages from {file}")

    def _cmd_stats(self, _: str) -> None:
        s = self.stats
        self.note(
            f"messages {len(self.messages)}, context {s.context}/{self.llm.max_seq_len} tokens, "
            f"generated {s.generated} tokens in {s.turns} answers, last {s.last_rate:.1f} tok/s"
        )

    # ---- a turn ----------------------------------------------------------------------------------
    def fit_prompt(self, reserve: int) -> list[int]:
        """Prompt ids for the conversation, dropping the oldest non-system turns until `reserve` fits."""
        dropped = 0
        while True:
            prompt = self.encode(self.messages)
            first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            if len(prompt) + reserve <= self.llm.max_seq_len or len(self.messages) - first <= 1:
                break
            del self.messages[first]
            dropped += 1
        if dropped:
            self.note(
                f"[dropped the {dropped} oldest message(s) to fit the {self.llm.max_seq_len}-token context]"
            )
        return prompt

    def _flagged(self, stage: str) -> bool:
        """Whether the guard (if it checks `stage`) calls the conversation's last turn unsafe; a
        guard that fails (a conversation too long for it) counts as unsafe: fail closed."""
        cfg = self.guard_settings
        if self.guard is None or cfg is None or stage not in cfg.stages:
            return False
        try:
            v = self.guard.classify(self.messages, "User" if stage == "input" else "Agent")
        except Llama3Error as e:
            self.note(f"[safety filter failed, treated as unsafe: {e}]")
            return True
        if not v.safe:
            self.note(f"[safety filter: {v.summary()}]")
        return not v.safe

    def turn(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        if self._flagged("input"):
            self.messages.pop()  # refused: the turn is not kept
            self.out.write((self.guard_settings.message if self.guard_settings else "") + "\n")
            self.out.flush()
            return
        for _ in range(MAX_TOOL_ROUNDS):
            if not self.answer():
                return

    def answer(self) -> bool:
        """Generate one answer; True when it called tools and their results were added."""
        # with an output check, the answer is shown only once the guard has judged it
        hold = self.guard_settings is not None and self.guard_settings.checks_output
        hold = hold or bool(self.tools)  # an answer that may be a call is shown once parsed
        reserve = min(self.params.max_tokens or 512, self.llm.max_seq_len // 4)
        try:
            prompt = self.fit_prompt(reserve)
            stream = self.llm.stream([prompt], self.params)
        except Llama3Error as e:  # e.g. one message alone is longer than the context
            self.messages.pop()
            self.note(f"error: {e}")
            return False
        pieces, n, t0, interrupted = [], 0, time.perf_counter(), False
        tokens: list[int] = []
        finish = None
        try:
            for ev in stream:
                n += 1
                tokens.append(ev.token)
                finish = ev.finish_reason or finish
                if ev.text:
                    pieces.append(ev.text)
                    if not hold:
                        self.out.write(ev.text)
                        self.out.flush()
        except KeyboardInterrupt:
            stream.close()
            interrupted = True
        secs = time.perf_counter() - t0
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        called = False
        if self.tools and finish == "stop" and not interrupted:
            called = self._tool_calls(tokens, pieces)
        if not called and hold:
            if self._flagged("output"):
                assert self.guard_settings is not None
                self.messages[-1]["content"] = self.guard_settings.message
            self.out.write(self.messages[-1]["content"])
        if not called:  # a call printed its own lines
            self.out.write(" [interrupted]\n" if interrupted else "\n")
        self.out.flush()
        s = self.stats
        s.turns, s.generated, s.seconds = s.turns + 1, s.generated + n, s.seconds + secs
        s.last_rate, s.context = (n / secs if secs > 0 else 0.0), len(prompt) + n
        if self.decorate:
            self.note(
                f"[{n} tokens, {s.last_rate:.1f} tok/s, context {s.context}/{self.llm.max_seq_len}]"
            )
        return called

    def _tool_calls(self, tokens: list[int], pieces: list[str]) -> bool:
        """Parse the answer for calls; print each, read its result, keep both in the history."""
        from ..tokenizer.chat_format import PYTHON_TAG
        from ..tools.parse import parse_answer

        tag = self.llm.tokenizer.special_tokens.get(PYTHON_TAG)  # the text skips specials
        text = (PYTHON_TAG if tokens[:1] == [tag] else "") + "".join(pieces)
        parsed = parse_answer(text, [t.name for t in self.tools])
        if not parsed.calls:
            return False
        calls = [c.openai() for c in parsed.calls]
        self.messages[-1] = {"role": "assistant", "content": parsed.content, "tool_calls": calls}
        if parsed.content:
            self.out.write(parsed.content + "\n")
        for c in parsed.calls:
            self.out.write(f"[tool call] {c.name} {c.arguments_json}\n")
            self.out.flush()
            self.note(f"paste the result of {c.name} (end with an empty line):")
            lines: list[str] = []
            while (line := self.read_line()) is not None and line.strip():
                lines.append(line.rstrip("\n"))
            self.messages.append(
                {"role": "tool", "tool_call_id": c.id, "content": "\n".join(lines)}
            )
        return True


def run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    params = sampling_params(args)  # checked before the load: a bad flag fails at once
    settings = guard_settings(args)  # a bad --guard* flag fails before anything loads
    tools = _read_tools(args.tools) if args.tools else None  # a bad file fails before the load
    llm = load_llama(args)
    guard = settings.load() if settings is not None else None
    session = ChatSession(
        llm,
        params,
        args.system,
        sys.stdout,
        sys.stderr,
        decorate=interactive,
        guard=guard,
        guard_settings=settings,
        tools=tools,
        read_line=lambda: _read_line(interactive),
    )
    if interactive:
        name = llm.loaded.checkpoint.path.name if llm.loaded else "model"
        session.note(
            f"llama3 chat · {name} · context {llm.max_seq_len} · /help for commands, Ctrl-D to quit"
        )
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            if interactive:
                print()
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt quits
            print()
            return 0
        if not interactive and line == "":
            return 0
        line = line.strip()
        if not line:
            continue
        if interactive and line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        session.turn(line)


def _read_line(interactive: bool) -> str | None:
    try:
        line = input("tool> ") if interactive else sys.stdin.readline()
    except EOFError:
        return None
    return None if not interactive and line == "" else line


def _read_tools(file: str) -> list[Any]:
    from ..tools.spec import parse_tools

    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidRequestError(
            f"cannot read --tools {file}: {e}", "give a JSON file with an OpenAI tools list"
        ) from None
    return parse_tools(data)
