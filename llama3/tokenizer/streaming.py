"""Streaming detokenization: generated ids in, final UTF-8-safe text deltas out, stop strings cut.

Two layers. Bytes -> text: byte-level BPE splits characters across tokens, so text is held back
until its bytes complete (no U+FFFD mid-stream). Text -> deltas: text that could still become a
stop string is held back until decided, and nothing from a stop string on is ever returned. The
concatenated deltas plus `flush()` always equal the one-shot decode (specials skipped, cut before
the first stop string). This module knows tokenizers only through `BaseTokenizer`; stop *ids* are
the generation loop's business.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from ..errors import InvalidRequestError
from .base import BaseTokenizer

_REPLACEMENT = "\ufffd"
# Text-window path only: emit anyway after this many ids without a complete character, so a
# stream of invalid bytes cannot grow the window (and the cost) without bound.
_MAX_PENDING_IDS = 16
# Text-window path only: drop consumed ids once this many pile up.
_COMPACT_AT = 1024


class IncrementalDetokenizer:
    """Turns a stream of generated token ids into text deltas that never need taking back.

    With a tokenizer that has `decode_bytes` (byte-level BPE), bytes are fed to an incremental
    UTF-8 decoder one token at a time. Otherwise each step decodes a short window of recent ids
    and keeps the part after the already-emitted context (the vLLM "prefix/read offset" method).
    Either way the work per token is bounded, so a long generation costs linear time.
    """

    def __init__(
        self,
        tokenizer: BaseTokenizer,
        stop: Sequence[str] | str = (),
        skip_special: bool = True,
    ) -> None:
        if isinstance(stop, str):  # OpenAI accepts a bare string
            stop = (stop,)
        for s in stop:
            if not isinstance(s, str) or not s:
                raise InvalidRequestError(
                    f"stop strings must be non-empty strings, got {s!r}",
                    hint="drop the empty entry or pass stop token ids to the generator instead",
                    param="stop",
                )
        self.tokenizer = tokenizer
        self.stop: tuple[str, ...] = tuple(stop)
        self.skip_special = skip_special
        self._stop_first_chars = frozenset(s[0] for s in self.stop)
        self._max_stop_len = max((len(s) for s in self.stop), default=0)
        specials = getattr(tokenizer, "special_tokens", None) or {}
        self._skip_ids = frozenset(specials.values()) if skip_special else frozenset()

        self._decode_bytes = getattr(tokenizer, "decode_bytes", None)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # text-window path state: ids[prefix:read] is emitted context, ids[read:] is pending
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

        self._held = ""  # decoded text that may still turn out to start a stop string
        self._pieces: list[str] = []
        self._text_cache: str | None = ""
        self._token_ids: list[int] = []
        self._stop_string: str | None = None
        self._flushed = False

    # ---- public ----------------------------------------------------------------------------------
    def add(self, token_id: int) -> str:
        """Take one generated id; return the text that is now final ("" while held back)."""
        if self._flushed:
            raise RuntimeError("IncrementalDetokenizer.add() called after flush()")
        self._token_ids.append(token_id)
        if self.stopped or token_id in self._skip_ids:
            return ""
        return self._release(self._decode_step(token_id), final=False)

    def flush(self) -> str:
        """End of generation: release everything still held (a dangling byte becomes U+FFFD)."""
        if self._flushed:
            return ""
        self._flushed = True
        if self.stopped:
            return ""
        return self._release(self._decode_rest(), final=True)

    @property
    def text(self) -> str:
        """All text returned by `add` and `flush` so far."""
        if self._text_cache is None:
            self._text_cache = "".join(self._pieces)
        return self._text_cache

    @property
    def stopped(self) -> bool:
        """True once a stop string has appeared; later ids add no text."""
        return self._stop_string is not None

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the text (the earliest one in the text), if any."""
        return self._stop_string

    @property
    def token_ids(self) -> list[int]:
        """Every id passed to `add`, in order (a copy)."""
        return list(self._token_ids)

    # ---- bytes -> text ---------------------------------------------------------------------------
    def _decode_step(self, token_id: int) -> str:
        if self._decode_bytes is not None:
            # The incremental decoder keeps an incomplete UTF-8 sequence until its bytes arrive.
            return self._utf8.decode(self._decode_bytes([token_id]))
        self._ids.append(token_id)
        pending = len(self._ids) - self._read_offset
        prefix_text = self.tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self.tokenizer.decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or (
            new_text.endswith(_REPLACEMENT) and pending < _MAX_PENDING_IDS
        ):
            return ""  # no text yet, or it ends inside a character that later ids may complete
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        if self._prefix_offset >= _COMPACT_AT:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return new_text[len(prefix_text) :]

    def _decode_rest(self) -> str:
        if self._decode_bytes is not None:
            return self._utf8.decode(b"", final=True)
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self.tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self.tokenizer.decode(self._ids[self._prefix_offset :])
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]

    # ---- text -> deltas --------------------------------------------------------------------------
    def _release(self, new_text: str, *, final: bool) -> str:
        buf = self._held + new_text
        # Only `buf` can hold a stop string: emitted text never ends in a possible stop prefix.
        cut, stop = self._find_stop(buf)
        if stop is not None:
            out, self._held, self._stop_string = buf[:cut], "", stop
        else:
            keep = 0 if final else self._stop_prefix_len(buf)
            out, self._held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        if out:
            self._pieces.append(out)
            self._text_cache = None
        return out

    def _find_stop(self, buf: str) -> tuple[int, str | None]:
        best, found = len(buf), None
        for s in self.stop:
            i = buf.find(s, 0, best + len(s) - 1)  # only a match starting before `best` can win
            if i != -1 and i < best:
                best, found = i, s
        return best, found

    def _stop_prefix_len(self, buf: str) -> int:
        """Length of the longest end of `buf` that is a proper prefix of some stop string."""
        for k in range(min(len(buf), self._max_stop_len - 1), 0, -1):
            if buf[-k] in self._stop_first_chars:
                tail = buf[-k:]
                if any(s.startswith(tail) for s in self.stop):
                    return k
        return 0
