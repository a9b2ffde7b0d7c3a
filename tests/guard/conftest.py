"""Tiny Llama 3 checkpoints whose answers are known (tests/forced_model.py): a chat model that
always gives ANSWER, and Llama Guard stand-ins that answer "unsafe\\nS2" or "safe".

A guard stand-in is one bigram chain `]` -> `\\n\\n` -> verdict -> `<|eot_id|>`, so the same model
answers both versions' prompts: Llama Guard 3's ends with the assistant header's `\\n\\n` (token
271), so it answers the verdict; Llama Guard 2's ends with ` [/INST]` (last token `]`), so it
answers `\\n\\n` then the verdict, as Guard 3 does under HF's template (the parser takes both).
"""

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
            after, answer = {
                "chat": (HEADER_NEWLINES, _ids(ANSWER)),
                "unsafe": (INST_CLOSE, [HEADER_NEWLINES, *_ids("unsafe\nS2")]),
                "safe": (INST_CLOSE, [HEADER_NEWLINES, *_ids("safe")]),
            }[name]
            cache[name] = forced_answer_model(root / name, after, answer, EOT, "3.1")
        return cache[name]

    return make
