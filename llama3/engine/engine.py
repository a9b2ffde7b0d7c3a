"""LLMEngine: continuous batching over a paged KV cache, one `step()` at a time.

`add_request` queues a prompt with its `SamplingParams`; each `step()` schedules (decode tokens
first, then prompt chunks), runs one forward pass, samples, and returns the token events produced;
`abort` frees a request's blocks at once. Single-threaded: an async front end runs `step()` on a
thread of its own and calls everything else through that thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidRequestError, RequestFailedError
from ..generation.params import GenerationResult, SamplingParams, TokenEvent
from ..generation.sequence_state import SequenceState, sample_next_tokens, validate_prompt
from ..model.paged_cache import PagedKVPool
from ..model.transformer import Transformer
from ..tokenizer.base import BaseTokenizer
from ..utils.device import available_memory
from .block_manager import BlockManager
from .config import EngineConfig, cdiv, num_blocks_for_memory
from .runner import ModelRunner
from .scheduler import Scheduler, SchedulerOutput
from .sequence import Sequence, SequenceStatus

if TYPE_CHECKING:
    from ..lora.multi import LoRABank

log = logging.getLogger(__name__)

#: default share of free memory for the KV pool when no size is given
KV_MEMORY_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    #: share of KV blocks held by unfinished requests (cached free blocks count as free)
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    #: prompt tokens looked up in / served from the prefix cache since the start
    prefix_cache_queried_tokens: int
    prefix_cache_hit_tokens: int


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    event: TokenEvent
    #: with `echo`, on a request's first output: each prompt token's logprob given its prefix
    #: (None for the first token) and, when `logprobs` > 0, its top alternatives
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None


def default_engine_config(
    model: Transformer,
    *,
    max_num_seqs: int = 16,
    max_model_len: int | None = None,
    kv_cache_bytes: int | None = None,
    block_size: int = 16,
    max_num_batched_tokens: int = 512,
) -> EngineConfig:
    """Size the KV pool from free memory (or `kv_cache_bytes`), never past what max_num_seqs
    sequences of max_model_len tokens could use."""
    args = model.params
    per_token = args.kv_bytes_per_token(model.dtype.itemsize)
    budget = (
        kv_cache_bytes
        if kv_cache_bytes is not None
        else int(available_memory(model.device) * KV_MEMORY_FRACTION)
    )
    blocks = num_blocks_for_memory(budget, per_token, block_size)
    model_len = max_model_len or min(args.max_position_embeddings, blocks * block_size)
    blocks = min(blocks, max_num_seqs * cdiv(model_len, block_size))
    return EngineConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max(max_num_batched_tokens, max_num_seqs),
        block_size=block_size,
        num_blocks=blocks,
        max_model_len=model_len,
    )


class LLMEngine:
    def __init__(
        self,
        model: Transformer,
        tokenizer: BaseTokenizer,
        config: EngineConfig | None = None,
        lora: LoRABank | None = None,
    ) -> None:
        """`lora`: the adapters requests may pick by id (`add_request(..., lora_id=)`)."""
        self.model, self.tokenizer = model, tokenizer
        self.lora = lora
        self.config = config or default_engine_config(model)
        self.device = model.device
        self.block_manager = BlockManager(
            self.config.num_blocks, self.config.block_size, self.config.enable_prefix_caching
        )
        self.scheduler = Scheduler(self.config, self.block_manager)
        self.pool = PagedKVPool(
            model.params,
            self.config.num_blocks,
            self.config.block_size,
            device=self.device,
            dtype=model.dtype,
        )
        self.runner = ModelRunner(model, self.pool, self.block_manager, lora)
        self._ids = itertools.count()
        self._prompt_lps: dict[object, tuple[list, list]] = {}
        #: requests a step failed alone (see `step`), until `take_failures` hands them on
        self._failures: list[tuple[str, RequestFailedError]] = []

    @property
    def max_model_len(self) -> int:
        return self.config.model_len

    def make_sequence(
        self,
        prompt: Seq[int],
        params: SamplingParams,
        request_id: str | None = None,
        lora_id: int = 0,
    ) -> Sequence:
        """Validate a request and build its `Sequence` without queueing it. Thread-safe: an async
        front end calls it on its own thread, so bad requests fail there, at once."""
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if lora_id and (self.lora is None or lora_id not in self.lora):
            raise InvalidRequestError(
                f"no LoRA adapter with id {lora_id} is loaded", "load it first", param="model"
            )
        validate_prompt(prompt, self.model.params.vocab_size, self.max_model_len)
        room = self.max_model_len - len(prompt)
        state = SequenceState(
            0,
            prompt,
            params,
            self.tokenizer,
            max_new=min(params.max_tokens or room, max(room, 1)),
            device=self.device,
        )
        return Sequence(
            rid,
            list(prompt),
            max_tokens=params.max_tokens,
            sampling=state,
            prompt_logprobs=params.echo,
            lora_id=lora_id,
        )

    def add_sequence(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def add_request(
        self,
        prompt: Seq[int],
        params: SamplingParams,
        request_id: str | None = None,
        lora_id: int = 0,
    ) -> str:
        """Queue a tokenized prompt (run with adapter `lora_id`, 0 = the base); returns its
        request id. Bad requests raise at once."""
        seq = self.make_sequence(prompt, params, request_id, lora_id)
        self.scheduler.add(seq)
        return str(seq.seq_id)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            num_blocks=bm.num_blocks,
            num_free_blocks=bm.num_free_blocks,
            kv_cache_usage=bm.usage,
            prefix_cache_hit_rate=bm.prefix_hit_rate,
            prefix_cache_queried_tokens=bm.queried_tokens,
            prefix_cache_hit_tokens=bm.hit_tokens,
        )

    def abort_all(self) -> list[str]:
        """Abort every unfinished request; returns their ids."""
        ids = self.scheduler.unfinished_ids()
        for rid in ids:
            self.abort(rid)  # type: ignore[arg-type]
        return [str(i) for i in ids]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def uses_lora(self, lora_id: int) -> bool:
        """Whether an unfinished request runs with adapter `lora_id`."""
        return any(
            self.scheduler.get(i).lora_id == lora_id for i in self.scheduler.unfinished_ids()
        )

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """One forward pass and its sampled tokens. A request whose rows or sampling raise fails
        alone: it is finished, its error waits in `take_failures`, and the rest of the batch
        goes on (a forward that fails for a batch but for none of its requests alone raises)."""
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        try:
            logits, prompt_logits = self.runner.run(out)
        except Exception as e:
            # Nothing was committed (computed counts advance in `postprocess`), so the requests
            # that pass alone simply run again in the next step.
            self._blame_forward(out, e)
            return []
        for s in out.scheduled:
            if s.seq.seq_id in prompt_logits:
                self._record_prompt_logprobs(s.seq, *prompt_logits[s.seq.seq_id])
        sampled = [s.seq for s in out.scheduled if s.sample]
        states: list[SequenceState] = [seq.sampling for seq in sampled]
        tokens = self._sample(sampled, logits)
        outputs, new_tokens, stopped = [], {}, set()
        for row, (seq, state, tok) in enumerate(zip(sampled, states, tokens)):
            if tok is None:
                continue
            try:
                ev = state.accept(tok, logits[row])
            except Exception as e:
                self._fail(seq, e)
                continue
            new_tokens[seq.seq_id] = tok
            o = RequestOutput(seq.seq_id, ev)
            if seq.seq_id in self._prompt_lps:
                o.prompt_logprobs, o.prompt_top_logprobs = self._prompt_lps.pop(seq.seq_id)
            outputs.append(o)
            if ev.finish_reason == "stop":
                stopped.add(seq.seq_id)
        self.scheduler.postprocess(out, new_tokens, stopped)
        return outputs

    def take_failures(self) -> list[tuple[str, RequestFailedError]]:
        """(request id, error) of each request a step failed alone since the last call."""
        failures, self._failures = self._failures, []
        return failures

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int | None]:
        """The batch's next tokens in one call; if that raises, row by row, failing the rows
        that raise alone (None in their place)."""
        if not seqs:
            return []
        try:
            return list(sample_next_tokens([q.sampling for q in seqs], logits))
        except Exception:
            pass
        tokens: list[int | None] = []
        for row, seq in enumerate(seqs):
            try:
                tokens.append(sample_next_tokens([seq.sampling], logits[row : row + 1])[0])
            except Exception as e:
                self._fail(seq, e)
                tokens.append(None)
        return tokens

    def _blame_forward(self, out: SchedulerOutput, error: Exception) -> None:
        """Run each scheduled entry alone to find the requests the failed forward was theirs."""
        if len(out.scheduled) == 1:
            self._fail(out.scheduled[0].seq, error)
            return
        blamed = 0
        for s in out.scheduled:
            try:
                self.runner.run(SchedulerOutput([s]))
            except Exception as e:
                self._fail(s.seq, e)
                blamed += 1
        if not blamed:
            raise error

    def _fail(self, seq: Sequence, error: Exception) -> None:
        log.error("request %s failed in the engine", seq.seq_id, exc_info=error)
        rid = str(seq.seq_id)
        self._prompt_lps.pop(seq.seq_id, None)
        self.scheduler.finish(seq.seq_id, SequenceStatus.FINISHED_ABORTED)
        self._failures.append(
            (
                rid,
                RequestFailedError(
                    f"the request failed in the engine: {type(error).__name__}: {error}",
                    "check its parameters (the other requests of its batch were not affected)",
                ),
            )
        )

    def _record_prompt_logprobs(self, seq: Sequence, first: int, logits: torch.Tensor) -> None:
        lps, tops = self._prompt_lps.setdefault(seq.seq_id, ([None], [None]))
        if len(lps) != first + 1:
            return  # a preempted sequence recomputing positions it already reported
        k = logits.shape[0]
        logp = torch.log_softmax(logits.float(), -1)
        targets = torch.tensor(seq.token_ids[first + 1 : first + 1 + k], device=logp.device)
        lps.extend(logp.gather(-1, targets[:, None])[:, 0].tolist())
        n = seq.sampling.params.logprobs or 0
        if n > 0:
            vals, ids = torch.topk(logp, n)
            tops.extend(list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist()))
        else:
            tops.extend([None] * k)

    def abort(self, request_id: str) -> bool:
        self._prompt_lps.pop(request_id, None)
        return self.scheduler.abort(request_id)

    def generate(
        self,
        prompts: Seq[Seq[int]],
        params: SamplingParams | Seq[SamplingParams],
        lora_ids: Seq[int] | None = None,
    ) -> list[GenerationResult]:
        """Run prompts to completion through the continuous batch (tests, offline use), each
        with its adapter in `lora_ids` (default: the base)."""
        ps = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        loras = list(lora_ids) if lora_ids is not None else [0] * len(prompts)
        ids = [self.add_request(p, sp, None, a) for p, sp, a in zip(prompts, ps, loras)]
        results = {rid: GenerationResult(prompt_tokens=list(p)) for rid, p in zip(ids, prompts)}
        for rid, sp in zip(ids, ps):
            if sp.logprobs is not None:
                results[rid].logprobs = []
        while self.has_unfinished():
            outs = self.step()
            failures = self.take_failures()
            if failures:  # offline: the caller gets the error, not a partial result
                self.abort_all()
                raise failures[0][1]
            for o in outs:
                r, ev = results[o.request_id], o.event
                r.tokens.append(ev.token)
                r.text += ev.text
                if r.logprobs is not None and ev.logprob is not None:
                    r.logprobs.append(ev.logprob)
                if o.prompt_logprobs is not None:
                    r.prompt_logprobs = o.prompt_logprobs
                if ev.finish_reason:
                    r.finish_reason = ev.finish_reason
        return [results[rid] for rid in ids]
