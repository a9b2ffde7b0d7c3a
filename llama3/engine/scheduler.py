"""Continuous batching: which sequences compute how many tokens in each step.

A step's schedule is a list of (sequence, number of new tokens). Each step first gives one decode
token to every running sequence that has finished its prompt (oldest first), then fills the rest of
the token budget with prompt chunks of running sequences still prefilling, then admits waiting
sequences in arrival order while `max_num_seqs` and the free blocks allow (chunked prefill: a long
prompt spans several steps, so running streams never stall behind it). When a decode cannot get a
block, the newest running sequence is preempted: its blocks are freed and it waits at the head of the
queue to be recomputed from its tokens, generated ones included. Requests are never dropped, and the
oldest running sequence always fits, so every request finishes.

Invariant kept by FIFO admission and newest-first preemption: every running sequence arrived before
every waiting one, so `running` and `waiting` are both in arrival order, and preempted sequences
(the oldest waiting) are admitted before new ones. Not thread-safe: call it from the engine's step
thread. Pure Python, no torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError, ContextLengthExceeded, InvalidRequestError
from .block_manager import BlockManager
from .config import EngineConfig
from .sequence import SeqId, Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    """Compute positions [start, start + num_new_tokens) of seq; `sample` = the last of them is the
    sequence's last token, so the runner samples the next token from its logits."""

    seq: Sequence
    num_new_tokens: int
    start: int
    sample: bool


@dataclass
class SchedulerOutput:
    #: decodes first (oldest first), then prompt chunks
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    #: sequences preempted this step (their blocks are already free)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager | None = None) -> None:
        bm = block_manager or BlockManager(
            config.num_blocks, config.block_size, config.enable_prefix_caching
        )
        if bm.block_size != config.block_size or bm.num_blocks < config.num_blocks:
            raise ConfigError(
                f"the block manager ({bm.num_blocks} blocks of {bm.block_size}) does not match "
                f"the engine config ({config.num_blocks} blocks of {config.block_size})",
                "build both from the same EngineConfig",
            )
        self.config = config
        self.block_manager = bm
        self.max_model_len = config.model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._seqs: dict[SeqId, Sequence] = {}
        self._arrivals = 0

    # ---- requests ------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new sequence. Raises InvalidRequestError / ContextLengthExceeded at once for a
        request that can never run, instead of letting it wait forever."""
        if seq.seq_id in self._seqs:
            raise InvalidRequestError(
                f"request id {seq.seq_id!r} is already in use", "use a unique id", param="id"
            )
        if seq.status is not SequenceStatus.WAITING or seq.block_table or seq.num_generated:
            raise InvalidRequestError(
                f"request {seq.seq_id!r} was already scheduled once",
                "build a new Sequence for each request",
            )
        if seq.num_tokens == 0:
            raise InvalidRequestError(
                "the prompt is empty", "give at least one token or character", param="prompt"
            )
        if seq.num_tokens >= self.max_model_len:
            raise ContextLengthExceeded(seq.num_tokens, self.max_model_len)
        mt = seq.max_tokens
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise InvalidRequestError(
                f"max_tokens must be a positive integer, got {mt!r}",
                "use 1 or more",
                param="max_tokens",
            )
        seq.arrival = self._arrivals
        self._arrivals += 1
        self._seqs[seq.seq_id] = seq
        self.waiting.append(seq)

    def get(self, seq_id: SeqId) -> Sequence | None:
        """The unfinished sequence with this id, or None."""
        return self._seqs.get(seq_id)

    def finish(self, seq_id: SeqId, status: SequenceStatus) -> bool:
        """End a sequence now, whatever its state, and free its blocks. False if it is unknown or
        already finished (a client that disconnects after its answer ended is not an error)."""
        if not status.is_finished:
            raise ValueError(f"{status} is not a finished status")
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return False
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = status
        return True

    def abort(self, seq_id: SeqId) -> bool:
        return self.finish(seq_id, SequenceStatus.FINISHED_ABORTED)

    def unfinished_ids(self) -> list[SeqId]:
        return list(self._seqs)

    # ---- metrics -------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    @property
    def prefix_hit_rate(self) -> float:
        return self.block_manager.prefix_hit_rate

    # ---- one step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        bm, budget = self.block_manager, self.config.max_num_batched_tokens

        # 1. One decode token per running sequence past its prompt, oldest first. A decode that
        #    needs a block and finds none preempts the newest running sequence (maybe itself).
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            if seq.num_uncomputed_tokens != 1:
                i += 1
                continue
            while not bm.can_append(seq, 1) and seq.status is SequenceStatus.RUNNING:
                out.preempted.append(self._preempt_newest())
            if seq.status is not SequenceStatus.RUNNING:
                break  # it was the newest, so nothing after it is left
            bm.append_slots(seq, 1)
            out.scheduled.append(ScheduledSeq(seq, 1, seq.num_computed_tokens, True))
            budget -= 1
            i += 1
        assert budget >= 0, "max_num_batched_tokens >= max_num_seqs is checked by EngineConfig"

        # 2. Prompt chunks of running sequences still prefilling (their blocks are allocated).
        for seq in self.running:
            if budget == 0:
                break
            if seq.num_uncomputed_tokens > 1:
                budget -= self._schedule_chunk(out, seq, budget)

        # 3. Admit waiting sequences in arrival order (strict FIFO, so none starves). Skipped in a
        #    step that preempted: the blocks are short, and the victim would only bounce back.
        while (
            self.waiting
            and budget > 0
            and not out.preempted
            and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            # Leave each running sequence room to grow by a block, so admission does not force
            # a preemption at the next decode; with nothing running, anything that fits goes.
            if not bm.can_allocate(seq, reserve=len(self.running)):
                break
            self.waiting.popleft()
            bm.allocate(seq)
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            budget -= self._schedule_chunk(out, seq, budget)
        return out

    def _schedule_chunk(self, out: SchedulerOutput, seq: Sequence, budget: int) -> int:
        n = min(seq.num_uncomputed_tokens, budget)
        start = seq.num_computed_tokens
        out.scheduled.append(ScheduledSeq(seq, n, start, start + n == seq.num_tokens))
        return n

    def _preempt_newest(self) -> Sequence:
        victim = self.running.pop()
        self.block_manager.free(victim)
        victim.status = SequenceStatus.PREEMPTED
        victim.num_preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def postprocess(
        self,
        output: SchedulerOutput,
        new_tokens: Mapping[SeqId, int | None],
        stopped: Collection[SeqId] = (),
    ) -> list[Sequence]:
        """Apply a step's results: advance the computed counts, append the token sampled for each
        sequence whose `sample` was set, and finish sequences in `stopped` (the engine's stop
        tokens and strings; checked first) or at max_tokens / max_model_len. Sequences finished or
        aborted since `schedule` are skipped. Returns the sequences finished here."""
        finished: list[Sequence] = []
        for s in output.scheduled:
            seq = s.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens = s.start + s.num_new_tokens
            self.block_manager.commit(seq)
            if not s.sample:
                continue
            token = new_tokens.get(seq.seq_id)
            if token is None:
                raise ValueError(f"no sampled token for {seq!r}, which completed its input")
            seq.append_token(token)
            if seq.seq_id in stopped:
                status = SequenceStatus.FINISHED_STOPPED
            elif (
                seq.max_tokens is not None and seq.num_generated >= seq.max_tokens
            ) or seq.num_tokens >= self.max_model_len:
                status = SequenceStatus.FINISHED_LENGTH
            else:
                continue
            self.finish(seq.seq_id, status)
            finished.append(seq)
        return finished
