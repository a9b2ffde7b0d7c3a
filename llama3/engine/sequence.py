"""One request as the scheduler sees it: its tokens, how many have K/V in the cache, its blocks.

A `Sequence` holds the prompt and the generated tokens in one list. `num_computed_tokens` counts the
leading tokens whose K/V are in the paged cache; the tokens after it are what the next steps compute.
A sequence whose only uncomputed token is the last sampled one is decoding; one with more is
prefilling (a fresh prompt, or a preempted sequence being recomputed with its generated tokens).
"""

from __future__ import annotations

import enum
from typing import Any

SeqId = str | int


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {
        SequenceStatus.FINISHED_STOPPED,
        SequenceStatus.FINISHED_LENGTH,
        SequenceStatus.FINISHED_ABORTED,
    }
)
_FINISH_REASON = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
}


class Sequence:
    """A request's token state. The scheduler and block manager own every field but `sampling`."""

    __slots__ = (
        "seq_id",
        "token_ids",
        "num_prompt_tokens",
        "max_tokens",
        "sampling",
        "status",
        "arrival",
        "block_table",
        "block_hashes",
        "num_registered_blocks",
        "num_computed_tokens",
        "num_cached_tokens",
        "num_preemptions",
        "prompt_logprobs",
        "lora_id",
    )

    def __init__(
        self,
        seq_id: SeqId,
        prompt_token_ids: list[int],
        *,
        max_tokens: int | None = None,
        sampling: Any = None,
        prompt_logprobs: bool = False,
        lora_id: int = 0,
    ) -> None:
        self.seq_id = seq_id
        #: the LoRA adapter its rows run with (`lora.LoRABank` id); 0 = the base model
        self.lora_id = lora_id
        #: the runner needs logits at every prompt position: no prefix-cache hits for this one
        self.prompt_logprobs = prompt_logprobs
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        #: new tokens at most; None = until max_model_len
        self.max_tokens = max_tokens
        #: opaque to the scheduler: the runner's sampling parameters and state
        self.sampling = sampling
        self.status = SequenceStatus.WAITING
        #: order of `Scheduler.add`; admission and preemption follow it
        self.arrival = -1
        #: KV block ids; position p lives in block_table[p // block_size]
        self.block_table: list[int] = []
        #: chained content hashes of leading full blocks, memoised by the block manager
        self.block_hashes: list[bytes] = []
        #: leading blocks of block_table already offered to the prefix cache
        self.num_registered_blocks = 0
        #: leading tokens whose K/V are in the cache
        self.num_computed_tokens = 0
        #: prompt tokens served from the prefix cache when the sequence was first admitted
        self.num_cached_tokens = 0
        self.num_preemptions = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def generated_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        """OpenAI's "stop" / "length", "abort" for an aborted request, None while unfinished."""
        return _FINISH_REASON.get(self.status)

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id!r}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )
