"""The Llama 3 tokenizer: Meta's tiktoken BPE (`tokenizer.model`) with its 256 special tokens.

Behaves exactly like `llama/tokenizer.py` of meta-llama/llama3 (name table "3.0") and
`models/llama3/tokenizer.py` of meta-llama/llama-models (tables "3.1" and "3.2"): the same split
pattern, special ids `num_base_tokens + i`, the same stop set and the same long-input chunking, so
ids match Meta's byte for byte. It owns ids <-> text only; chat layout lives in `chat_format.py`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Collection, Iterator, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import ClassVar, Literal

import tiktoken

from ..errors import InvalidRequestError, TokenizerError
from .base import BaseTokenizer

log = logging.getLogger(__name__)

#: the bundled vocabulary (Meta Llama 3 Community License, see assets/LICENSE-LLAMA3-NOTICE.txt)
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "assets" / "tokenizer.model"

PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_RESERVED_SPECIAL_TOKENS = 256
# tiktoken's Rust core panics on inputs much longer than this.
TIKTOKEN_MAX_ENCODE_CHARS = 400_000
# Very long runs of (non-)whitespace make tiktoken's regex quadratic (openai/tiktoken#195).
MAX_NO_WHITESPACES_CHARS = 25_000

_NAMED_SPECIALS: dict[str, tuple[str, ...]] = {
    # meta-llama/llama3: ten names, then reserved_special_token_5 ...
    "3.0": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
    ),
    # meta-llama/llama-models (Llama 3.1): reserved 2..4 get names, python_tag added, then reserved_2 ...
    "3.1": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|step_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ),
}
# Llama 3.2+ only adds <|image|> (128011).
_NAMED_SPECIALS["3.2"] = (*_NAMED_SPECIALS["3.1"], "<|image|>")
_FIRST_RESERVED_INDEX = {"3.0": 5, "3.1": 2, "3.2": 2}
SPECIAL_TOKENS_VERSIONS = ("3.0", "3.1", "3.2")


def special_token_names(version: str = "3.1") -> list[str]:
    """The 256 special-token names in id order (id = num_base_tokens + index) for a name table."""
    if version not in _NAMED_SPECIALS:
        raise TokenizerError(
            f"unknown Llama 3 special-token table {version!r}",
            hint=f"use one of {', '.join(SPECIAL_TOKENS_VERSIONS)}",
        )
    named = _NAMED_SPECIALS[version]
    first = _FIRST_RESERVED_INDEX[version]
    reserved = [
        f"<|reserved_special_token_{first + i}|>"
        for i in range(NUM_RESERVED_SPECIAL_TOKENS - len(named))
    ]
    return [*named, *reserved]


def load_bpe_ranks(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """Read a tiktoken BPE file ("base64(bytes) rank" per line), checking what tiktoken would not."""
    path = Path(path)
    hint = (
        "pass the Llama 3 `tokenizer.model` (the tiktoken file in a checkpoint's `original/` folder), "
        "or leave the path out to use the bundled one"
    )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file not found: {path}", hint=hint) from None
    except IsADirectoryError:
        raise TokenizerError(
            f"tokenizer path is a directory, not a file: {path}", hint=hint
        ) from None
    except OSError as e:
        raise TokenizerError(
            f"cannot read tokenizer file {path}: {e.strerror}", hint=hint
        ) from None

    def corrupt(why: str) -> TokenizerError:
        return TokenizerError(
            f"{path} is not a tiktoken BPE vocabulary: {why}",
            hint=hint + "; a Llama 2 SentencePiece tokenizer.model does not work for Llama 3",
        )

    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise corrupt(f"line {lineno} is not 'base64-token rank'")
        token_b64, rank_text = parts
        try:
            token = base64.b64decode(token_b64, validate=True)
            rank = int(rank_text)
        except (binascii.Error, ValueError):
            raise corrupt(f"line {lineno} is not 'base64-token rank'") from None
        if token in ranks:
            raise corrupt(f"line {lineno} repeats a token that already has rank {ranks[token]}")
        ranks[token] = rank
    if not ranks:
        raise corrupt("the file holds no tokens")
    # Special ids are placed at len(ranks) + i, so ranks must be exactly 0..n-1.
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise corrupt(f"ranks are not the numbers 0..{len(ranks) - 1}, each once")
    # Byte-level BPE needs every single byte as a token, or tiktoken's core panics on unseen bytes.
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise corrupt(f"{len(missing)} of the 256 single-byte tokens are missing")
    return ranks


class Tokenizer(BaseTokenizer):
    """Meta's Llama 3 tokenizer over tiktoken.

    `special_tokens_version` picks the special-token names: "3.0" (meta-llama/llama3), "3.1"
    (llama-models, the default: eom/python_tag/pad), "3.2" (adds <|image|>). Ids are the same in all.
    """

    pat_str = PAT_STR
    num_reserved_special_tokens = NUM_RESERVED_SPECIAL_TOKENS
    add_bos = True
    _instance: ClassVar[Tokenizer | None] = None

    @classmethod
    def get_instance(cls) -> Tokenizer:
        """The bundled tokenizer with 3.1 names, loaded once per process (llama-models' API)."""
        if Tokenizer._instance is None:
            Tokenizer._instance = Tokenizer()
        return Tokenizer._instance

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        special_tokens_version: str = "3.1",
    ) -> None:
        super().__init__()
        path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
        names = special_token_names(special_tokens_version)
        mergeable_ranks = load_bpe_ranks(path)
        num_base_tokens = len(mergeable_ranks)
        self.model_path = path
        self.special_tokens_version = special_tokens_version
        self.special_tokens: dict[str, int] = {
            name: num_base_tokens + i for i, name in enumerate(names)
        }
        self.model = tiktoken.Encoding(
            name=path.name,
            pat_str=self.pat_str,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self._id_to_special = {i: name for name, i in self.special_tokens.items()}

        self.n_words: int = self.model.n_vocab
        self.bos_id: int | None = self.special_tokens["<|begin_of_text|>"]
        self.eos_id: int | None = self.special_tokens["<|end_of_text|>"]
        self.eot_id: int = self.special_tokens["<|eot_id|>"]
        self.eom_id: int | None = self.special_tokens.get("<|eom_id|>")
        self.python_tag_id: int | None = self.special_tokens.get("<|python_tag|>")
        self.pad_id: int = self.special_tokens.get("<|finetune_right_pad_id|>", -1)
        for stop_id in (self.eos_id, self.eom_id, self.eot_id):
            self.add_stop_token(stop_id, "tokenizer")
        log.info("Reloaded tiktoken model from %s", path)
        log.info("#words: %d - BOS ID: %d - EOS ID: %d", self.n_words, self.bos_id, self.eos_id)

    # ---- encode ----------------------------------------------------------------------------------
    def encode(
        self,
        s: str,
        *,
        bos: bool,
        eos: bool,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = (),
    ) -> list[int]:
        """Encode `s` to ids, Meta's way (special-token text is plain text unless allowed).

        `s` is cut into 400k-character windows, each split so that no piece holds a run of more
        than 25k whitespace or non-whitespace characters, and the pieces are encoded one by one.
        """
        if not isinstance(s, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(s).__name__}")
        ids: list[int] = []
        for start in range(0, len(s), TIKTOKEN_MAX_ENCODE_CHARS):
            window = s[start : start + TIKTOKEN_MAX_ENCODE_CHARS]
            for piece in self._split_whitespaces_or_nonwhitespaces(
                window, MAX_NO_WHITESPACES_CHARS
            ):
                try:
                    ids.extend(
                        self.model.encode(
                            piece,
                            allowed_special=allowed_special,
                            disallowed_special=disallowed_special,
                        )
                    )
                except ValueError as e:  # tiktoken: disallowed special-token text in the input
                    raise InvalidRequestError(
                        f"the text contains a disallowed special token ({e})",
                        hint="remove it, or encode with allowed_special / disallowed_special=()",
                    ) from None
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    @staticmethod
    def _split_whitespaces_or_nonwhitespaces(
        s: str, max_consecutive_slice_len: int
    ) -> Iterator[str]:
        """Cut `s` so no piece holds more than `max_consecutive_slice_len` consecutive characters
        of one class (str.isspace or not); yields at least one (possibly empty) string.

        Same cuts as Meta's character walk: inside each maximal run of one class, a cut falls every
        `max_consecutive_slice_len` characters from the run's start. Only runs longer than the limit
        cut anything, so a regex finds them instead of a Python loop over every character.
        """
        n = max_consecutive_slice_len
        if len(s) <= n:
            yield s
            return
        # The look-behinds anchor each branch at a run's start, keeping the scan linear.
        long_run = re.compile(rf"(?<!\s)\s{{{n + 1},}}|(?<!\S)\S{{{n + 1},}}")
        last_cut = 0
        for run in long_run.finditer(s):
            for cut in range(run.start() + n, run.end(), n):
                yield s[last_cut:cut]
                last_cut = cut
        yield s[last_cut:]

    # ---- decode ----------------------------------------------------------------------------------
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids` (special ids give their literal text); never lossy."""
        try:
            return self.model.decode_bytes(list(ids))
        except (KeyError, OverflowError, TypeError):
            bad = next(
                (i for i in ids if not isinstance(i, int) or not 0 <= i < self.n_words), None
            )
            raise InvalidRequestError(
                f"token id {bad!r} is not in the vocabulary (0..{self.n_words - 1})",
                hint="pass ids produced by this tokenizer or a model with the same vocabulary",
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text; special ids decode to their literal text, bad UTF-8 to U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_piece(self, token_id: int) -> str:
        """One token as printable text: special names as is, undecodable bytes as \\xNN escapes."""
        special = self._id_to_special.get(token_id)
        if special is not None:
            return special
        return self.decode_bytes([token_id]).decode("utf-8", errors="backslashreplace")
