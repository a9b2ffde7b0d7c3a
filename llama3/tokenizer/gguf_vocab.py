"""A tokenizer rebuilt from GGUF metadata, tokenizing the way llama.cpp does.

Owns: turning the `tokenizer.*` keys into an `HFTokenizer`: byte-level BPE ("gpt2") with the
pre-tokenizer regexes of llama.cpp's `src/llama-vocab.cpp` for the named `tokenizer.ggml.pre`,
control tokens as special tokens, BOS/EOS/EOT/EOM ids, llama.cpp's add-BOS defaults, the chat
template, and the stop set. Does not read tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..checkpoint.gguf_header import GGUFHeader, read_gguf_header, read_gguf_metadata
from ..errors import TokenizerError
from .hf import LLAMA3_DEFAULTS, HFTokenizer, byte_level_alphabet, is_llama3_vocab

# tokenizer.ggml.token_type values (llama.h llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4

__all__ = [
    "GGUFHeader",
    "GGUFTokenizer",
    "read_gguf_header",
    "read_gguf_metadata",
    "tokenizer_from_gguf",
]

# ---- pre-tokenizers (llama.cpp src/llama-vocab.cpp, llm_tokenizer_bpe) ----------------------------
# llama.cpp splits with each regex in turn, keeping matches and the text between them as pieces;
# a `tokenizers` Split with behavior "isolated" does the same.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Meta's pattern with the case-insensitive contractions spelled out, exactly as llama.cpp has it.
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")

#: pre name -> (llama.cpp pre-tokenizer type, regexes, ignore_merges, add BOS when the file is silent)
_PRE_TYPES: dict[str, tuple[str, tuple[str, ...], bool, bool]] = {}
for _name in (
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
):
    _PRE_TYPES[_name] = ("llama3", (_LLAMA3,), True, True)
for _name in ("dbrx", "smaug-bpe"):
    _PRE_TYPES[_name] = ("llama3", (_LLAMA3,), False, False)
for _name in ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"):
    _PRE_TYPES[_name] = ("smollm", (r"\p{N}", _GPT2), False, False)
for _name in ("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "trillion", "exaone4"):
    _PRE_TYPES[_name] = ("gpt2", (_GPT2,), False, False)
_PRE_TYPES["default"] = ("default", _DEFAULT, False, False)


def _byte_level_bpe(
    metadata: Mapping[str, Any], tokens: list[str], tok_types: list[int], warnings: list[str]
) -> tuple[Any, bool]:
    """A `tokenizers.Tokenizer` for a "gpt2" vocabulary, and whether BOS is added by default."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = metadata.get("tokenizer.ggml.pre") or ""
    spec = _PRE_TYPES.get(pre)
    llama3 = is_llama3_vocab({t: i for i, t in enumerate(tokens) if tok_types[i] == _CONTROL})
    if spec is not None and llama3 and spec[0] != "llama3":
        # e.g. Llama GGUFs written with pre "default" (ollama#17698): follow the file, but say so.
        warnings.append(
            f"the GGUF pre-tokenizer is {pre!r} but the vocabulary is Llama 3's; ids follow the "
            "file (as llama.cpp does) and may differ from Meta's tokenizer (llama-bpe)"
        )
    if spec is None:
        if not pre and llama3:
            # Old Llama 3 GGUFs (llama.cpp#7476) lack the key; Meta's regex is the right one.
            spec = _PRE_TYPES["llama-bpe"]
            warnings.append(
                "the GGUF names no pre-tokenizer (tokenizer.ggml.pre); the vocabulary is Llama 3's, "
                "so Meta's split pattern (llama-bpe) is used where llama.cpp would use 'default'"
            )
        else:
            spec = _PRE_TYPES["default"]
            warnings.append(
                f"unknown GGUF pre-tokenizer {pre!r}; using llama.cpp's 'default' split, so token ids "
                "may differ from llama.cpp and from what the model was trained on"
                if pre
                else "the GGUF names no pre-tokenizer (tokenizer.ggml.pre); using llama.cpp's "
                "'default' split, which may not be what the model was trained on"
            )
    _, regexes, ignore_merges, add_bos_default = spec

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a repeated spelling keeps its first id, like llama.cpp's lookup
    merges_raw = metadata.get("tokenizer.ggml.merges")
    if not merges_raw:
        raise TokenizerError(
            "the GGUF byte-level BPE vocabulary has no merges (tokenizer.ggml.merges)",
            hint="convert the model again with llama.cpp's convert_hf_to_gguf.py",
        )
    merges = []
    for m in merges_raw:
        left, sep, right = m.partition(" ")
        if not sep:
            raise TokenizerError(
                f"malformed GGUF merge {m!r} (expected 'left right')",
                hint="convert the model again with llama.cpp's convert_hf_to_gguf.py",
            )
        merges.append((left, right))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tk.decoder = decoders.ByteLevel()
    _add_gguf_added_tokens(tk, tokens, tok_types, special_types=(_CONTROL,))
    return tk, add_bos_default


def _sentencepiece_bpe(
    metadata: Mapping[str, Any], tokens: list[str], tok_types: list[int], warnings: list[str]
) -> tuple[Any, bool]:
    """A `tokenizers.Tokenizer` for a "llama" (SentencePiece BPE) vocabulary, as llama.cpp runs it.

    llama.cpp merges the adjacent pair whose joined text is the best-scoring token, then spells
    whatever is left as `<0xNN>` byte tokens; a BPE whose merges are ranked by the score of the
    token they make, with byte fallback, does the same. Spaces become "▁", and a "▁" is put in
    front of the text and after every special token (llama.cpp's `add_space_prefix`).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise TokenizerError(
            "the GGUF SentencePiece vocabulary has no scores for its tokens (tokenizer.ggml.scores)",
            hint="convert the model again with llama.cpp's convert_hf_to_gguf.py",
        )
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    # Only normal tokens take part in merging (bytes, controls and user tokens never do).
    mergeable = {t: i for t, i in vocab.items() if tok_types[i] == _NORMAL}
    ranked = []
    for merged, i in mergeable.items():
        for k in range(1, len(merged)):
            left, right = merged[:k], merged[k:]
            if left in mergeable and right in mergeable:
                ranked.append((-scores[i], i, mergeable[left], left, right))
    ranked.sort()
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    unk_token = tokens[unk] if isinstance(unk, int) and 0 <= unk < len(tokens) else None
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(left, right) for *_, left, right in ranked],
            unk_token=unk_token,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    tk.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581")] * prefix + [normalizers.Replace(" ", "\u2581")]
    )
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        + [decoders.Strip(" ", 1, 0)] * prefix
    )
    _add_gguf_added_tokens(tk, tokens, tok_types, special_types=(_UNKNOWN, _CONTROL))
    return tk, True  # llama.cpp adds BOS to SentencePiece vocabularies unless the file says not


def _add_gguf_added_tokens(
    tk: Any, tokens: list[str], tok_types: list[int], special_types: tuple[int, ...]
) -> None:
    """Control tokens become special (matched only when allowed); user-defined ones are always
    matched, as llama.cpp does."""
    from tokenizers import AddedToken

    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, tok_types)
        if ty in special_types
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, ty in zip(tokens, tok_types)
        if ty == _USER_DEFINED
    ]
    if special:
        tk.add_special_tokens(special)
    if user:
        tk.add_tokens(user)


_BUILDERS: dict[str, Callable[..., tuple[Any, bool]]] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}


class GGUFTokenizer(HFTokenizer):
    """A GGUF vocabulary as a tokenizer; `pre` is the file's `tokenizer.ggml.pre`."""

    pre: str = ""
    eot_id: int | None = None
    eom_id: int | None = None
    pad_id: int | None = None


def tokenizer_from_gguf(metadata: Mapping[str, Any]) -> GGUFTokenizer:
    """Build the tokenizer a GGUF file describes, from its metadata (see `read_gguf_metadata`).

    Ids match llama.cpp's for the supported pre-tokenizers; anything guessed is explained in the
    result's `warnings`. Raises TokenizerError for vocabulary types this engine does not rebuild.
    """
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not model or not tokens:
        raise TokenizerError(
            "the GGUF file has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)",
            hint="pass the model's tokenizer.json directory or tokenizer.model as the tokenizer",
        )
    builder = _BUILDERS.get(model)
    if builder is None:
        raise TokenizerError(
            f"GGUF tokenizer type {model!r} is not supported (supported: gpt2 = byte-level BPE, "
            "llama = SentencePiece BPE)",
            hint="pass the model's Hugging Face tokenizer.json directory as the tokenizer instead",
        )
    tokens = list(tokens)
    n = len(tokens)
    tok_types = list(metadata.get("tokenizer.ggml.token_type") or [1] * n)
    if len(tok_types) != n:
        raise TokenizerError(
            f"the GGUF has {n} tokens but {len(tok_types)} token types",
            hint="the file is corrupt: convert the model again",
        )
    warnings: list[str] = []
    tk, add_bos_default = builder(metadata, tokens, tok_types, warnings)

    def special_id(key: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{key}")
        if value is None:
            return None
        if not isinstance(value, int) or not 0 <= value < n:
            warnings.append(f"tokenizer.ggml.{key} = {value!r} is not a token id; ignored")
            return None
        return value

    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    template = metadata.get("tokenizer.chat_template")
    tok = GGUFTokenizer(
        tk,
        bos_id=special_id("bos_token_id"),
        eos_id=special_id("eos_token_id"),
        # llama.cpp: the file's flag wins; otherwise BOS for the llama3 family only.
        add_bos=bool(add_bos) if add_bos is not None else add_bos_default,
        chat_template=template if isinstance(template, str) and template else None,
        n_words=n,
        name="GGUF vocabulary",
    )
    tok.pre = metadata.get("tokenizer.ggml.pre") or ""
    tok.warnings = warnings
    tok.eot_id = special_id("eot_token_id")
    tok.eom_id = special_id("eom_token_id")
    tok.pad_id = special_id("padding_token_id")
    tok.add_stop_token(tok.eos_id, "gguf eos_token_id")
    tok.add_stop_token(tok.eot_id, "gguf eot_token_id")
    tok.add_stop_token(tok.eom_id, "gguf eom_token_id")
    tok.add_llama3_stop_tokens()
    if (
        is_llama3_vocab(tok.special_tokens)
        and tok.eos_id == tok.special_tokens.get("<|end_of_text|>")
        and tok.eot_id is None
    ):
        warnings.append(
            "the GGUF names <|end_of_text|> as eos and no eot token; <|eot_id|> is added to the "
            f"stop set ({LLAMA3_DEFAULTS}) so instruct replies end"
        )
    return tok


def byte_level_spelling(data: bytes) -> str:
    """`data` in the byte-level alphabet GGUF/HF BPE vocabularies use (b" hi" -> "Ġhi")."""
    table = byte_level_alphabet()
    return "".join(table[b] for b in data)
