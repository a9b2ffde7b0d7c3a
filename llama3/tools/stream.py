"""Tool calls in a streamed answer: hold back what may be a call, release what is not.

Text that may still be the start of a call (a `{`, a `[`, `<|python_tag|>` or a prefix of it, a
built-in `name.call(`) is held; once it cannot be one it goes out as content. A held call is
parsed with `parse_answer` when the answer ends, so the deltas always reassemble to the same
calls as the non-streamed answer; a held text that is no call is released as content then.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer.chat_format import EOM, PYTHON_TAG
from .parse import parse_answer
from .spec import BUILTIN_TOOLS

#: argument text per delta once a call is known (clients join them)
ARG_CHUNK = 16


@dataclass
class StreamParser:
    tool_names: Collection[str]
    parallel: bool = True
    _held: str = ""
    _released: str = ""  # content already sent
    _calling: bool = False  # a call has begun: hold everything to the end
    calls: list[Any] = field(default_factory=list)

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas (`{"content": ...}`) that may go out now."""
        self._held += text
        if self._calling:
            return []
        if PYTHON_TAG in self._held:
            before, _, _ = self._held.partition(PYTHON_TAG)
            self._calling = True
            return self._content(before)
        if not (self._released + self._held).strip() or self._may_be_call():
            return []
        # not a call at the start; keep only what may begin a `<|python_tag|>` later
        keep = _tag_prefix_len(self._held)
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return self._content(out)

    def finish(self) -> tuple[list[dict[str, Any]], bool]:
        """The last deltas, and whether the answer was tool calls (finish_reason "tool_calls")."""
        parsed = parse_answer(self._released + self._held, self.tool_names, parallel=self.parallel)
        if not parsed.calls:
            rest = self._held.replace(PYTHON_TAG, "").replace(EOM, "")
            return self._content(rest), False
        self.calls = parsed.calls
        deltas: list[dict[str, Any]] = []  # text before a python_tag went out in `feed`
        for i, c in enumerate(parsed.calls):
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": ""},
                        }
                    ]
                }
            )
            args = c.arguments_json
            for k in range(0, len(args), ARG_CHUNK):
                piece = args[k : k + ARG_CHUNK]
                deltas.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        return deltas, True

    def _content(self, text: str) -> list[dict[str, Any]]:
        if self._calling:
            self._held = self._held[self._held.index(PYTHON_TAG) :]
        if not text:
            return []
        self._released += text
        return [{"content": text}]

    def _may_be_call(self) -> bool:
        if self._released.strip():  # content has begun: only a later python_tag can be a call
            return False
        s = self._held.lstrip()
        if s[0] in "{[" or PYTHON_TAG.startswith(s[: len(PYTHON_TAG)]):
            return True
        for name in self.tool_names:
            head = name + ".call("
            if name in BUILTIN_TOOLS and head.startswith(s[: len(head)]):
                return True
        return False


def _tag_prefix_len(s: str) -> int:
    """Length of the longest tail of `s` that is a proper prefix of `<|python_tag|>`."""
    for k in range(min(len(s), len(PYTHON_TAG) - 1), 0, -1):
        if PYTHON_TAG.startswith(s[-k:]):
            return k
    return 0
