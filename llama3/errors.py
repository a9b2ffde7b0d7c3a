"""Typed errors for everything a user can get wrong.

Every error carries a one-sentence message naming the problem and a `hint` naming the fix. The CLI
prints `error: <message> (hint: <hint>)` with no traceback; the server maps `http_status` to a
response. `assert` is kept for internal invariants only.
"""

from __future__ import annotations


class Llama3Error(Exception):
    """Base class: `message` says what is wrong, `hint` what to do about it."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(Llama3Error):
    """A model configuration (params.json, config.json, GGUF metadata) is missing or inconsistent."""

    http_status = 400


class CheckpointError(Llama3Error):
    """A checkpoint file is missing, truncated, corrupt, or disagrees with its configuration."""


class UnsupportedFormatError(CheckpointError):
    """The path is not a checkpoint format this engine knows."""


class TokenizerError(Llama3Error):
    """A tokenizer file is missing or unusable, or a chat template failed to render."""


class InvalidRequestError(Llama3Error):
    """A generation request has an invalid parameter (bad sampling value, empty prompt, ...)."""

    exit_code = 2
    http_status = 400

    def __init__(self, message: str, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message, hint)
        self.param = param


class RequestFailedError(InvalidRequestError):
    """One request failed inside the engine (its forward rows or its sampling raised); the other
    requests of its batch carried on."""


class ContextLengthExceeded(InvalidRequestError):
    """The prompt (plus what must be generated) does not fit in the model's context window."""

    def __init__(
        self,
        prompt_tokens: int,
        limit: int,
        hint: str | None = None,
        max_tokens: int | None = None,
    ) -> None:
        """With `max_tokens`: the prompt fits, but not with that many new tokens after it."""
        if max_tokens is None:
            message = (
                f"the prompt has {prompt_tokens} tokens but the context window is {limit} tokens"
            )
            default_hint = (
                "shorten the prompt or raise max_seq_len (if the model and memory allow it)"
            )
        else:
            message = (
                f"{max_tokens} new tokens were asked for, but the prompt has {prompt_tokens} "
                f"tokens and the context window is {limit} tokens"
            )
            default_hint = (
                f"lower max_tokens to {limit - prompt_tokens} or less, or shorten the prompt"
            )
        super().__init__(
            message,
            hint or default_hint,
            param="prompt" if max_tokens is None else "max_tokens",
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class TensorParallelError(Llama3Error):
    """A tensor-parallel run cannot start (rendezvous, process group) or lost one of its ranks."""
