"""Tokenizers run by the Hugging Face `tokenizers` library: `tokenizer.json` directories, and the
GGUF vocabularies that `gguf_vocab.py` rebuilds as a `tokenizers.Tokenizer`.

Owns: reading a model directory (tokenizer.json, tokenizer_config.json, generation_config.json,
chat templates), the stop set with where each id came from, and Meta's encode semantics on top of
the library: BOS only when asked (never through the post-processor) and special-token text plain
unless allowed. Does not own chat layout (chat_template.py, chat_format.py).
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InvalidRequestError, TokenizerError
from .base import BaseTokenizer

if TYPE_CHECKING:
    import tokenizers

log = logging.getLogger(__name__)

#: special tokens that together mark a Llama 3 vocabulary (tiktoken, HF or GGUF)
LLAMA3_MARKERS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
#: end-of-turn / end-of-message: Llama 3 instruct models emit these, whatever the configs say
LLAMA3_STOP_TEXTS = ("<|eot_id|>", "<|eom_id|>")
LLAMA3_DEFAULTS = "llama3 defaults"


def is_llama3_vocab(special_tokens: Mapping[str, int]) -> bool:
    """Whether a special-token table is Llama 3's (header and end-of-turn tokens present)."""
    return all(t in special_tokens for t in LLAMA3_MARKERS)


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, 0x7F-0xA0,
    0xAD) take the characters from U+0100 on, in byte order. So a space is "Ġ" and "\\n" is "Ċ".
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    spare = 0x100
    for b in range(256):
        if b not in table:
            table[b] = chr(spare)
            spare += 1
    return table


def _special_text_regex(texts: Collection[str]) -> re.Pattern[str] | None:
    # Longest first, so the leftmost match is also the longest (as the library matches them).
    if not texts:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)))


class HFTokenizer(BaseTokenizer):
    """A `tokenizers.Tokenizer` behind the Meta-style `BaseTokenizer` interface.

    Build one with `HFTokenizer.from_dir(path)` (or `gguf_vocab.tokenizer_from_gguf`). Ids, BOS/EOS
    choice, chat template and stop set are resolved at construction; encode/decode are thread-safe.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool | None = None,
        chat_template: str | None = None,
        n_words: int | None = None,
        name: str = "tokenizer.json",
    ) -> None:
        super().__init__()
        self._tk = tokenizer
        self.name = name
        #: problems found while loading that did not stop it (shown by `llama3 inspect`)
        self.warnings: list[str] = []
        self.n_words = n_words or tokenizer.get_vocab_size(with_added_tokens=True)
        added = tokenizer.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in sorted(added.items()) if t.special}
        self._added_text = {i: t.content for i, t in added.items()}
        # Non-special added tokens are matched wherever they appear, as the library (and llama.cpp,
        # for user-defined GGUF tokens) does; only special tokens obey `allowed_special`.
        self._always_re = _special_text_regex([t.content for t in added.values() if not t.special])
        self._special_re = _special_text_regex(list(self.special_tokens))
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.chat_template = chat_template
        if add_bos is None:
            # The post-processor adding BOS is how HF Llama 3 tokenizers say "BOS always"; Meta's
            # reference adds it to every Llama 3 prompt even where the post-processor is missing.
            add_bos = self._post_processor_adds_bos() or is_llama3_vocab(self.special_tokens)
        self.add_bos = bool(add_bos) and bos_id is not None
        decoder = tokenizer.decoder
        self._byte_level = decoder is not None and type(decoder).__name__ == "ByteLevel"
        if not self._byte_level:
            # No byte-exact decode: streaming falls back to its text-window path.
            self.decode_bytes = None  # type: ignore[assignment]

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        """Load a Hugging Face tokenizer directory (or its `tokenizer.json` file).

        Reads `tokenizer.json`, and when present `tokenizer_config.json` (bos/eos tokens,
        `add_bos_token`, `chat_template`), `chat_template.jinja` / `chat_template.json`, and
        `generation_config.json` (`bos_token_id`, `eos_token_id` int or list).
        """
        from tokenizers import Tokenizer

        d = Path(path)
        if d.is_file() and d.name == "tokenizer.json":
            d = d.parent
        tj = d / "tokenizer.json"
        if not tj.is_file():
            raise TokenizerError(
                f"no tokenizer.json in {d}",
                hint="pass a Hugging Face model directory that holds tokenizer.json",
            )
        try:
            tk = Tokenizer.from_file(str(tj))
        except Exception as e:  # noqa: BLE001 - the library raises bare Exception for bad files
            raise TokenizerError(
                f"{tj} is not a tokenizer.json the `tokenizers` library can read: {e}",
                hint="re-download the tokenizer files or upgrade `tokenizers`",
            ) from None
        config = _read_json(d / "tokenizer_config.json")
        gen = _read_json(d / "generation_config.json")

        gen_eos = _int_list(gen.get("eos_token_id"), d / "generation_config.json")
        gen_bos = _int_list(gen.get("bos_token_id"), d / "generation_config.json")
        cfg_bos = _token_id(tk, config.get("bos_token"))
        cfg_eos = _token_id(tk, config.get("eos_token"))
        bos_id = cfg_bos if cfg_bos is not None else (gen_bos[0] if gen_bos else None)
        eos_id = cfg_eos if cfg_eos is not None else (gen_eos[0] if gen_eos else None)
        add_bos = config.get("add_bos_token")
        tok = cls(
            tk,
            bos_id=bos_id,
            eos_id=eos_id,
            add_bos=add_bos if isinstance(add_bos, bool) else None,
            chat_template=_chat_template(config, d),
            name=str(tj),
        )
        for key in ("bos_token", "eos_token"):
            if config.get(key) is not None and _token_id(tk, config[key]) is None:
                tok.warnings.append(
                    f"tokenizer_config.json {key} {_token_text(config[key])!r} is not in the vocabulary"
                )
        tok.add_stop_token(cfg_eos, "tokenizer_config.json")
        for i in gen_eos:
            tok.add_stop_token(i, "generation_config.json")
        tok.add_llama3_stop_tokens()
        return tok

    def add_llama3_stop_tokens(self) -> None:
        """Stop on `<|eot_id|>` / `<|eom_id|>` in a Llama 3 vocabulary, whatever the configs say.

        Llama 3 configs may name `<|end_of_text|>` as eos while the instruct model ends its turn
        with `<|eot_id|>` (and 3.1 tool calls with `<|eom_id|>`).
        """
        if is_llama3_vocab(self.special_tokens):
            for text in LLAMA3_STOP_TEXTS:
                self.add_stop_token(self.special_tokens.get(text), LLAMA3_DEFAULTS)

    def _post_processor_adds_bos(self) -> bool:
        if self.bos_id is None or self._tk.post_processor is None:
            return False
        return self._tk.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]

    # ---- text <-> ids ----------------------------------------------------------------------------
    def encode(
        self,
        s: str,
        *,
        bos: bool,
        eos: bool,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = (),
    ) -> list[int]:
        """Encode `s` like Meta's tokenizer: special-token text is plain text unless allowed.

        `disallowed_special` ("all" = every special token not allowed) makes such text an error.
        """
        if not isinstance(s, str):
            raise TypeError(f"HFTokenizer.encode expects a str, got {type(s).__name__}")
        allowed = (
            frozenset(self.special_tokens)
            if allowed_special == "all"
            else frozenset(allowed_special) & self.special_tokens.keys()
        )
        if disallowed_special == "all":
            disallowed: AbstractSet[str] = self.special_tokens.keys() - allowed
        else:
            disallowed = set(disallowed_special)
        found = set(self._special_re.findall(s)) if self._special_re is not None else set()
        bad = found & disallowed
        if bad:
            raise InvalidRequestError(
                f"the text contains disallowed special token(s) {', '.join(sorted(bad))}",
                hint="remove them, or encode with allowed_special / disallowed_special=()",
            )
        if found <= allowed:
            # Every special text (if any) becomes its id: the library does exactly that.
            ids = self._tk.encode(s, add_special_tokens=False).ids
        else:
            ids = []
            allowed_re = _special_text_regex(allowed)
            pos = 0
            for m in allowed_re.finditer(s) if allowed_re is not None else ():
                ids += self._encode_plain(s[pos : m.start()])
                ids.append(self.special_tokens[m.group()])
                pos = m.end()
            ids += self._encode_plain(s[pos:])
        if bos:
            ids.insert(0, self._require(self.bos_id, "BOS"))
        if eos:
            ids.append(self._require(self.eos_id, "EOS"))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        """Encode `text` with special-token text as ordinary text (non-special added tokens still
        match). The library always matches special tokens, so this runs its normalizer,
        pre-tokenizer and model directly; the whole run is pre-tokenized in one go, so the
        pieces around a special-token text are the ones tiktoken's `encode_ordinary` would make."""
        if not text:
            return []
        if self._always_re is not None:
            ids: list[int] = []
            pos = 0
            for m in self._always_re.finditer(text):
                ids += self._encode_plain_run(text[pos : m.start()])
                ids.append(self._tk.token_to_id(m.group()))
                pos = m.end()
            return ids + self._encode_plain_run(text[pos:])
        return self._encode_plain_run(text)

    def _encode_plain_run(self, text: str) -> list[int]:
        if not text:
            return []
        if self._special_re is None or self._special_re.search(text) is None:
            return self._tk.encode(text, add_special_tokens=False).ids
        tk = self._tk
        if tk.normalizer is not None:
            text = tk.normalizer.normalize_str(text)
        pieces = (
            tk.pre_tokenizer.pre_tokenize_str(text)
            if tk.pre_tokenizer is not None
            else [(text, None)]
        )
        model = tk.model
        return [t.id for piece, _ in pieces for t in model.tokenize(piece)]

    def _require(self, token_id: int | None, what: str) -> int:
        if token_id is None:
            raise TokenizerError(
                f"the tokenizer {self.name} has no {what} token",
                hint=f"encode with {what.lower()}=False, or set {what.lower()}_token in tokenizer_config.json",
            )
        return token_id

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = []
        for value in ids:
            try:
                i = operator.index(value)  # numpy / torch integers too
            except TypeError:
                i = -1
            if not 0 <= i < self.n_words:
                raise InvalidRequestError(
                    f"token id {value!r} is not in the vocabulary (0..{self.n_words - 1})",
                    hint="pass ids produced by this tokenizer or a model with the same vocabulary",
                )
            out.append(i)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text; special ids decode to their literal text, bad UTF-8 to U+FFFD."""
        return self._tk.decode(self._check_ids(ids), skip_special_tokens=False)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids` (byte-level vocabularies only); never lossy."""
        table = _byte_decoder()
        out = bytearray()
        for i in self._check_ids(ids):
            added = self._added_text.get(i)
            if added is not None:
                out += added.encode("utf-8")
                continue
            piece = self._tk.id_to_token(i) or ""
            for ch in piece:
                b = table.get(ch)
                # A character outside the byte alphabet (a mislabelled GGUF token) is its UTF-8.
                out += bytes([b]) if b is not None else ch.encode("utf-8")
        return bytes(out)

    def id_to_piece(self, token_id: int) -> str:
        """One token as printable text: added tokens as is, undecodable bytes as \\xNN escapes."""
        added = self._added_text.get(token_id)
        if added is not None:
            return added
        if self._byte_level:
            return self.decode_bytes([token_id]).decode("utf-8", errors="backslashreplace")
        self._check_ids([token_id])
        return self._tk.id_to_token(token_id) or ""

    def token_to_id(self, text: str) -> int | None:
        """The id of a vocabulary entry (byte-level spelling for BPE pieces), or None."""
        return self._tk.token_to_id(text)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    return {ch: b for b, ch in byte_level_alphabet().items()}


# ---- config helpers ------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(
            f"cannot read {path}: {e}", hint="fix or remove the file (it must be a JSON object)"
        ) from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} is not a JSON object", hint="fix or remove the file")
    return data


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes a token as a string or as an AddedToken dict {"content": ...}.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _token_id(tk: tokenizers.Tokenizer, value: Any) -> int | None:
    text = _token_text(value)
    return tk.token_to_id(text) if text is not None else None


def _int_list(value: Any, source: Path) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TokenizerError(
            f"{source}: token ids must be an integer or a list of integers, got {value!r}",
            hint="fix the file or remove it",
        )
    return values


def _chat_template(config: Mapping[str, Any], d: Path) -> str | None:
    """`chat_template` from tokenizer_config.json (a string, or a list of {name, template} of
    which "default" is used), else the newer separate chat_template.jinja / chat_template.json."""
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        value = named.get("default")
    if isinstance(value, str) and value:
        return value
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    value = _read_json(d / "chat_template.json").get("chat_template")
    return value if isinstance(value, str) and value else None
