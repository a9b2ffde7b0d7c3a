"""Engine runtime knobs: one frozen dataclass, validated where it is built.

`EngineConfig` holds what the scheduler and block manager need (batch limits, the token budget, the
KV block size and count, the longest sequence). Model architecture lives in `llama3.config.ModelArgs`;
`num_blocks_for_memory` turns a KV-cache memory budget into a block count.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, InvalidRequestError


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class EngineConfig:
    """Limits for one engine. `max_model_len=None` means "as long as the KV cache holds"."""

    #: sequences in the running batch at most
    max_num_seqs: int = 16
    #: tokens (decode tokens + prompt chunks) computed per step at most
    max_num_batched_tokens: int = 512
    #: KV positions per block
    block_size: int = 16
    #: blocks in the KV pool
    num_blocks: int = 2048
    #: longest prompt + generation, in tokens; resolved to an int by __post_init__
    max_model_len: int | None = None
    #: reuse the KV blocks of a shared prompt prefix across requests
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_blocks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidRequestError(
                    f"{name} must be a positive integer, got {v!r}", "use 1 or more", param=name
                )
        if self.max_num_batched_tokens < self.max_num_seqs:
            # Every running sequence gets its decode token each step, so the budget must hold them.
            raise InvalidRequestError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than "
                f"max_num_seqs ({self.max_num_seqs})",
                "raise max_num_batched_tokens or lower max_num_seqs",
                param="max_num_batched_tokens",
            )
        capacity = self.num_blocks * self.block_size
        if self.max_model_len is None:
            object.__setattr__(self, "max_model_len", capacity)
            return
        v = self.max_model_len
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise InvalidRequestError(
                f"max_model_len must be an integer of at least 2, got {v!r}",
                "use 2 or more",
                param="max_model_len",
            )
        # The last token of a sequence is never fed back, so one sequence holds max_model_len - 1
        # positions; it must fit alone, or a long request could wait forever.
        if cdiv(v - 1, self.block_size) > self.num_blocks:
            raise ConfigError(
                f"max_model_len {v} does not fit in the KV cache ({self.num_blocks} blocks of "
                f"{self.block_size} tokens = {capacity} tokens)",
                "give the KV cache more memory or lower max_model_len",
            )

    @property
    def model_len(self) -> int:
        """`max_model_len` as an int (it is always resolved after construction)."""
        assert self.max_model_len is not None
        return self.max_model_len


def num_blocks_for_memory(memory_bytes: int, kv_bytes_per_token: int, block_size: int) -> int:
    """How many KV blocks fit in `memory_bytes` (see `ModelArgs.kv_bytes_per_token`)."""
    if kv_bytes_per_token < 1 or block_size < 1:
        raise ValueError("kv_bytes_per_token and block_size must be positive")
    block_bytes = kv_bytes_per_token * block_size
    n = memory_bytes // block_bytes
    if n < 1:
        raise ConfigError(
            f"a KV-cache budget of {memory_bytes} bytes holds no block "
            f"(one block of {block_size} tokens needs {block_bytes} bytes)",
            "give the KV cache more memory",
        )
    return n
