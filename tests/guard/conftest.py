"""Tiny Llama 3 checkpoints whose answers are known (tests/forced_model.py): a chat model that
always gives ANSWER, and Llama Guard stand-ins that always answer "unsafe\\nS2" or "safe" after
their version's prompt ends (Guard 3: the assistant header's "\\n\\n"; Guard 2: " [/INST]")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))

from forced_model import forced_answer_model  # noqa: E402

from llama3.tokenizer import Tokenizer  # noqa: E402

ANSWER = "Sure! Mix bleach with ammonia, then breathe the fumes deeply near an open bucket."
TOK = Tokenizer()
EOT = TOK.special_tokens["<|eot_id|>"]
HEADER_NEWLINES = 271  # "\n\n": the last token of a Llama 3 / Guard 3 prompt
INST_CLOSE = TOK.encode(" [/INST]", bos=False, eos=False)[-1]  # "]": Guard 2's last token


def _ids(text: str) -> list[int]:
    return TOK.encode(text, bos=False, eos=False)


@pytest.fixture(scope="session")
def forced(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard-models")
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            after, text, variant = {
                "chat": (HEADER_NEWLINES, ANSWER, "3.1"),
                "guard3-unsafe": (HEADER_NEWLINES, "unsafe\nS2", "3.1"),
                "guard3-safe": (HEADER_NEWLINES, "safe", "3.1"),
                "guard2-unsafe": (INST_CLOSE, "unsafe\nS2", "3.0"),
            }[name]
            cache[name] = forced_answer_model(root / name, after, _ids(text), EOT, variant)
        return cache[name]

    return make
