"""The tokenizer interface every backend implements (tiktoken Llama 3, HF tokenizer.json, GGUF vocab).

Generation code only talks to this interface. A backend knows ids and text; it does not know models.
The stop set is kept with the source of each id so `llama3 inspect` can say where it came from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from collections.abc import Set as AbstractSet
from typing import Literal


class BaseTokenizer(ABC):
    #: vocabulary size including special tokens
    n_words: int
    bos_id: int | None
    eos_id: int | None
    #: whether prompts get a BOS token (always for Llama 3; `add_bos_token` elsewhere)
    add_bos: bool = True
    #: a Jinja chat template shipped with the tokenizer (HF tokenizer_config.json, GGUF metadata)
    chat_template: str | None = None
    #: special token text -> id
    special_tokens: dict[str, int]

    def __init__(self) -> None:
        self._stop_sources: dict[int, list[str]] = {}

    # ---- stop set --------------------------------------------------------------------------------
    def add_stop_token(self, token_id: int | None, source: str) -> None:
        """Add `token_id` to the stop set, remembering where it came from."""
        if token_id is None or token_id < 0:
            return
        srcs = self._stop_sources.setdefault(int(token_id), [])
        if source not in srcs:
            srcs.append(source)

    @property
    def stop_tokens(self) -> list[int]:
        """Ids that end a generation (union over every source), sorted."""
        return sorted(self._stop_sources)

    @property
    def stop_token_sources(self) -> dict[int, list[str]]:
        return {k: list(v) for k, v in sorted(self._stop_sources.items())}

    # ---- text <-> ids ----------------------------------------------------------------------------
    @abstractmethod
    def encode(
        self,
        s: str,
        *,
        bos: bool,
        eos: bool,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = (),
    ) -> list[int]:
        """Encode `s`. Special-token text in `s` is plain text unless listed in `allowed_special`."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text; special ids decode to their literal text."""

    @abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """A printable form of one token (for `llama3 tokenize`)."""

    def encode_prompt(self, s: str) -> list[int]:
        """Encode a plain-text prompt the way the model expects (BOS when the tokenizer asks for it)."""
        return self.encode(s, bos=self.add_bos and self.bos_id is not None, eos=False)
