"""llama3: a pure-PyTorch engine for the Meta Llama 3 family.

Drop-in for Meta's reference package (`from llama3 import Llama, Tokenizer, ChatFormat, ...`), plus
`Llama.load(path)` for Meta, Hugging Face and GGUF checkpoints. Built with Meta Llama 3.
"""

from __future__ import annotations

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
from .generation.llama import ChatPrediction, CompletionPrediction, Llama
from .generation.params import GenerationResult, SamplingParams, TokenEvent
from .model.transformer import Transformer
from .tokenizer.chat_format import ChatFormat, Dialog, Message, Role
from .tokenizer.tiktoken_bpe import Tokenizer

__version__ = "0.1.0"

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
