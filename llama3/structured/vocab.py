"""What a grammar engine needs to know of our tokenizer: the bytes of every token id.

Every backend (tiktoken Llama 3, HF tokenizer.json, GGUF vocab) exposes `decode_bytes`, which is
exact for byte-level vocabularies; special ids (and ids past the tokenizer, where the model's
embedding is padded) get no bytes, so no grammar can ever emit them as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..errors import InvalidRequestError
from ..tokenizer.base import BaseTokenizer


@dataclass(frozen=True)
class TokenVocab:
    #: bytes of each id (b"" for special and padding ids), len == the model's vocabulary size
    token_bytes: tuple[bytes, ...]
    #: ids that are special tokens (never text)
    special_ids: frozenset[int]
    #: the tokenizer's stop ids: the only tokens allowed once the grammar is complete
    stop_ids: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @cached_property
    def fingerprint(self) -> int:
        return hash((self.token_bytes, self.special_ids, self.stop_ids))


def token_vocab(tokenizer: BaseTokenizer, vocab_size: int | None = None) -> TokenVocab:
    """The `TokenVocab` of `tokenizer`, padded to `vocab_size` (the model's logits width)."""
    decode_bytes = getattr(tokenizer, "decode_bytes", None)
    if decode_bytes is None:
        raise InvalidRequestError(
            "structured output needs a byte-level tokenizer (this one has no exact token bytes)",
            "use a model with a byte-level BPE vocabulary (Llama 3, SmolLM2), or drop the "
            "response_format / guided_* constraint",
            param="response_format",
        )
    n = tokenizer.n_words
    size = max(n, vocab_size or n)
    special = set(tokenizer.special_tokens.values()) | set(tokenizer.stop_tokens)
    out = [b"" if i in special else decode_bytes([i]) for i in range(n)]
    out += [b""] * (size - n)
    special |= set(range(n, size))
    stops = tuple(sorted(t for t in tokenizer.stop_tokens if t < size))
    return TokenVocab(tuple(out), frozenset(special), stops)
