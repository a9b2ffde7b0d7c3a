"""Tokenizers and chat formatters: pick the backend for a path, and the chat layout for a tokenizer.

`load_tokenizer(path)` recognises Meta's tiktoken `tokenizer.model`, Hugging Face `tokenizer.json`
directories and GGUF files; `chat_formatter(tokenizer)` returns Meta's Llama 3 layout or the
model's Jinja template. Backends are imported lazily, so `import llama3.tokenizer` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TokenizerError
from .base import BaseTokenizer

if TYPE_CHECKING:
    from .chat_format import ChatFormat, ChatFormatter
    from .chat_template import JinjaChatFormat
    from .gguf_vocab import GGUFTokenizer, read_gguf_metadata, tokenizer_from_gguf
    from .hf import HFTokenizer
    from .tiktoken_bpe import Tokenizer

__all__ = [
    "BaseTokenizer",
    "ChatFormat",
    "ChatFormatter",
    "GGUFTokenizer",
    "HFTokenizer",
    "JinjaChatFormat",
    "Tokenizer",
    "chat_formatter",
    "load_tokenizer",
    "read_gguf_metadata",
    "tokenizer_from_gguf",
]

_LAZY = {
    "ChatFormat": "chat_format",
    "ChatFormatter": "chat_format",
    "GGUFTokenizer": "gguf_vocab",
    "HFTokenizer": "hf",
    "JinjaChatFormat": "chat_template",
    "Tokenizer": "tiktoken_bpe",
    "read_gguf_metadata": "gguf_vocab",
    "tokenizer_from_gguf": "gguf_vocab",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)


def _is_tiktoken_file(path: Path) -> bool:
    """Meta's format is text, "base64 rank" per line; a SentencePiece model is binary protobuf."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    first = head.split(b"\n", 1)[0].split()
    return len(first) == 2 and first[1].isdigit()


def _is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def load_tokenizer(path: str | os.PathLike[str]) -> BaseTokenizer:
    """The tokenizer stored at `path`.

    - a tiktoken `tokenizer.model` (Meta's format), or a directory holding one -> `Tokenizer`
    - a directory with `tokenizer.json` (or that file) -> `HFTokenizer` (with its configs)
    - a `.gguf` file -> the vocabulary in its metadata (`tokenizer_from_gguf`)
    """
    p = Path(path)
    if p.is_dir():
        model = p / "tokenizer.model"
        if model.is_file() and _is_tiktoken_file(model):
            from .tiktoken_bpe import Tokenizer

            return Tokenizer(model)
        if (p / "tokenizer.json").is_file():
            from .hf import HFTokenizer

            return HFTokenizer.from_dir(p)
        sentencepiece = model.is_file()
    elif p.is_file():
        if p.suffix == ".gguf" or _is_gguf_file(p):
            from .gguf_vocab import read_gguf_metadata, tokenizer_from_gguf

            return tokenizer_from_gguf(read_gguf_metadata(p))
        if p.name == "tokenizer.json":
            from .hf import HFTokenizer

            return HFTokenizer.from_dir(p.parent)
        if _is_tiktoken_file(p):
            from .tiktoken_bpe import Tokenizer

            return Tokenizer(p)
        sentencepiece = p.name == "tokenizer.model"
    else:
        raise TokenizerError(
            f"tokenizer path not found: {p}",
            hint="pass a tokenizer.model file, a directory with tokenizer.json, or a .gguf file",
        )
    if sentencepiece:
        raise TokenizerError(
            f"{p} holds a SentencePiece tokenizer.model (Llama 2 style), which is not supported",
            hint="use the model's Hugging Face directory with tokenizer.json instead",
        )
    raise TokenizerError(
        f"no tokenizer found at {p} (looked for a tiktoken tokenizer.model, tokenizer.json, "
        "or a GGUF file)",
        hint="pass a tokenizer.model file, a directory with tokenizer.json, or a .gguf file",
    )


def chat_formatter(tokenizer: BaseTokenizer) -> ChatFormatter:
    """How dialogs become prompt ids for this tokenizer's model.

    Meta's tiktoken tokenizer -> Meta's layout (`ChatFormat`); a tokenizer with a chat template ->
    that template (`JinjaChatFormat`); a Llama 3 vocabulary without a template -> `ChatFormat`.
    """
    from .hf import is_llama3_vocab
    from .tiktoken_bpe import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        from .chat_format import ChatFormat

        return ChatFormat(tokenizer)
    template = getattr(tokenizer, "chat_template", None)
    if template:
        from .chat_template import JinjaChatFormat

        return JinjaChatFormat(tokenizer, template)
    if is_llama3_vocab(tokenizer.special_tokens):
        from .chat_format import ChatFormat

        return ChatFormat(tokenizer)
    raise TokenizerError(
        "this model has no chat template",
        hint="it is probably a base (not instruct) model: use plain text completion, "
        "or pass a tokenizer that carries a chat template",
    )
