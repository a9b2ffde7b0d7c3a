"""llama3: a pure-PyTorch engine for the Meta Llama 3 family.

Drop-in for Meta's reference package (`from llama3 import Llama, Tokenizer, ChatFormat, ...`), plus
`Llama.load(path)` for Meta, Hugging Face and GGUF checkpoints. Built with Meta Llama 3.
"""

from __future__ import annotations

from typing import Any

from .config import ModelArgs, RopeScaling
from .errors import (
    CheckpointError,
    ConfigError,
    ContextLengthExceeded,
    InvalidRequestError,
    Llama3Error,
    TokenizerError,
    UnsupportedFormatError,
)
from .generation.params import GenerationResult, SamplingParams, TokenEvent
from .tokenizer.chat_format import ChatFormat, Dialog, Message, Role
from .tokenizer.tiktoken_bpe import Tokenizer

__version__ = "0.1.0"

# What needs torch is imported on first use, so `llama3 --help`, `llama3 download` and
# `llama3 tokenize` start without loading torch (~2 s).
_LAZY = {
    "Llama": ".generation.llama",
    "ChatPrediction": ".generation.llama",
    "CompletionPrediction": ".generation.llama",
    "Transformer": ".model.transformer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llama3' has no attribute {name!r}")


__all__ = [
    "ChatFormat",
    "ChatPrediction",
    "CheckpointError",
    "CompletionPrediction",
    "ConfigError",
    "ContextLengthExceeded",
    "Dialog",
    "GenerationResult",
    "InvalidRequestError",
    "Llama",
    "Llama3Error",
    "Message",
    "ModelArgs",
    "Role",
    "RopeScaling",
    "SamplingParams",
    "TokenEvent",
    "Tokenizer",
    "TokenizerError",
    "Transformer",
    "UnsupportedFormatError",
    "__version__",
]
