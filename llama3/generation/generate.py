"""Batched generation over a contiguous KV cache, as a stream of `TokenEvent`s.

Prompts are left-aligned, as in Meta's `Llama.generate`: the common prefix is prefilled in one
forward pass, then one position per step; rows whose prompt is longer keep their prompt tokens
(teacher forcing) until they start generating. Every front end (Meta's text/chat completion, the
console chat, streaming) consumes this one stream, so streamed and non-streamed text agree.
This module knows token ids and the tokenizer interface, not chat formats or HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidRequestError
from ..model.kv_cache import KVCache
from ..model.transformer import Transformer
from ..tokenizer.base import BaseTokenizer
from ..utils.memory import release_freed_memory
from .params import GenerationResult, SamplingParams, TokenEvent
from .sequence_state import SequenceState, sample_next_ids, validate_prompt

if TYPE_CHECKING:
    from ..model.compiled import CompiledDecoder


class BatchGeneration:
    """Iterate to get `TokenEvent`s; `prompt_logprobs[i]` is filled for rows with `echo`."""

    #: with a compiled decoder, queue each step before reading the last one's tokens (`_pipelined`)
    pipelined = True

    def __init__(
        self,
        model: Transformer,
        tokenizer: BaseTokenizer,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        *,
        max_seq_len: int,
        decoder: CompiledDecoder | None = None,
    ) -> None:
        if not prompts:
            raise InvalidRequestError(
                "no prompts given", "pass at least one prompt", param="prompt"
            )
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(
                f"{len(params)} sampling params for {len(prompts)} prompts", "pass one per prompt"
            )
        vocab = model.params.vocab_size
        for p in prompts:
            validate_prompt(p, vocab, max_seq_len)
        self.model, self.tokenizer = model, tokenizer
        self.prompts = [list(p) for p in prompts]
        self.params = list(params)
        for sp in self.params:
            if sp.guided is not None:  # compiled (and cached) now: a bad constraint fails here
                from ..structured.compiler import compiler_for

                compiler_for(tokenizer).compile(sp.guided)
        self.max_seq_len = max_seq_len
        if decoder is not None and (
            len(prompts) > decoder.max_batch_size or max_seq_len > decoder.max_seq_len
        ):
            decoder = None  # larger than what was compiled for: run eagerly
        self.decoder = decoder
        self.prompt_logprobs: list[list[float] | None] = [
            [0.0] if p.echo else None for p in self.params
        ]

    def __iter__(self) -> Iterator[TokenEvent]:
        model, prompts, params = self.model, self.prompts, self.params
        device = model.device
        bsz = len(prompts)
        lens = [len(p) for p in prompts]
        room = [self.max_seq_len - n for n in lens]
        max_new = [min(p.max_tokens or r, r) for p, r in zip(params, room)]
        total_len = max(n + m for n, m in zip(lens, max_new))
        min_len = min(lens)

        tokens = torch.zeros((bsz, total_len), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        decoder = self.decoder
        if decoder is not None:
            cache: KVCache = decoder.cache_for(bsz)
        else:
            cache = KVCache(model.params, bsz, total_len, device=device, dtype=model.dtype)
        states = [
            SequenceState(i, p, sp, self.tokenizer, max_new=m, device=device)
            for i, (p, sp, m) in enumerate(zip(prompts, params, max_new))
        ]
        want_echo = any(p.echo for p in params)

        prev_pos = 0
        pipelined = decoder is not None and self.pipelined
        for cur_pos in range(min_len, total_len):
            if pipelined and cur_pos - prev_pos == 1 and cur_pos >= max(lens):
                yield from self._pipelined(tokens, states, prev_pos, total_len)
                return
            if decoder is not None and cur_pos - prev_pos == 1:
                logits = decoder.step(tokens[:, prev_pos:cur_pos], prev_pos)
            else:
                logits = model(
                    tokens[:, prev_pos:cur_pos],
                    prev_pos,
                    cache,
                    last_only=not (want_echo and prev_pos == 0),
                )
            if want_echo and logits.shape[1] > 1:
                self._record_prompt_logprobs(
                    logits[:, :-1], tokens[:, prev_pos + 1 : cur_pos], prev_pos + 1
                )
            last = logits[:, -1]
            active = [s for s in states if not s.done and cur_pos >= lens[s.index]]
            if active:
                drawn = self._draw(active, last, tokens, cur_pos).tolist()
                for s, tok in zip(active, drawn):
                    yield s.accept(tok, last[s.index])
            for i, lp in enumerate(self.prompt_logprobs):
                if lp is not None and cur_pos < lens[i]:  # a longer prompt: keep its token
                    lp.append(float(torch.log_softmax(last[i], -1)[tokens[i, cur_pos]]))
            if prev_pos == 0 and device.type == "cpu":
                # the prompt's activations are dead: hand them back before the cache grows
                release_freed_memory()
            prev_pos = cur_pos
            if all(s.done for s in states):
                break
        if device.type == "cpu" and decoder is None:
            del cache  # this generation's own cache: back to the system, not kept
            release_freed_memory()

    def _pipelined(
        self, tokens: torch.Tensor, states: list[SequenceState], pos: int, total_len: int
    ) -> Iterator[TokenEvent]:
        """Decode steps from `pos` (every row past its prompt), each queued before the host
        reads the tokens of the one before: the chosen ids stay on the device to feed the next
        step, and one copy brings them back, so on a GPU the host's per-token work (the
        detokenizer, the consumer of this stream) overlaps the next step instead of stalling it.
        The sampler decides everything from host parameters (`generation.sampling`), so greedy
        and sampled rows alike are drawn without waiting on the device; logprobs are read after
        the next step is queued. The tokens are those of the step-by-step loop; a sequence that
        ends costs at most one step computed in vain."""
        decoder = self.decoder
        assert decoder is not None
        cuda = tokens.device.type == "cuda"
        host = torch.empty(tokens.shape[0], dtype=torch.long, pin_memory=cuda)
        copied = torch.cuda.Event() if cuda else None  # marks each step's ids on the host
        logits = decoder.step(tokens[:, pos : pos + 1], pos)
        for cur_pos in range(pos + 1, total_len):
            last = logits[:, -1]
            active = [s for s in states if not s.done]
            drawn = self._draw(active, last, tokens, cur_pos)
            ids = host[: len(active)]
            ids.copy_(drawn, non_blocking=cuda)
            if copied is not None:
                copied.record()
            if cur_pos + 1 < total_len:  # the next step, queued behind the copy
                logits = decoder.step(tokens[:, cur_pos : cur_pos + 1], cur_pos)
            if copied is not None:
                copied.synchronize()
            for s, tok in zip(active, ids.tolist()):
                yield s.accept(tok, last[s.index])
            if all(s.done for s in states):
                break

    # ---- helpers ---------------------------------------------------------------------------------
    def _draw(
        self, active: list[SequenceState], last: torch.Tensor, tokens: torch.Tensor, pos: int
    ) -> torch.Tensor:
        """The next tokens of the `active` rows, from `last` (every row's logits), written into
        `tokens[:, pos]` on the device and returned in `active`'s order."""
        tp = self.model.tp
        full = len(active) == tokens.shape[0]
        rows = None if full else torch.tensor([s.index for s in active], device=tokens.device)
        drawn = sample_next_ids(active, last if rows is None else last.index_select(0, rows))
        if tp is not None and tp.lockstep:
            # every rank runs this loop (Meta's API under torchrun): rank 0's draw is everyone's
            drawn = tp.broadcast_tensor(drawn.contiguous())
        if rows is None:
            tokens[:, pos] = drawn
        else:
            tokens[rows, pos] = drawn
        return drawn

    def _record_prompt_logprobs(
        self, logits: torch.Tensor, targets: torch.Tensor, first_pos: int
    ) -> None:
        lps = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, acc in enumerate(self.prompt_logprobs):
            if acc is None:
                continue
            n = len(self.prompts[i]) - first_pos  # prompt positions of row i inside this chunk
            acc.extend(lps[i, : max(0, n)].tolist())


def generate(
    model: Transformer,
    tokenizer: BaseTokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    max_seq_len: int,
    decoder: CompiledDecoder | None = None,
) -> list[GenerationResult]:
    """Run `BatchGeneration` to the end and collect one `GenerationResult` per prompt."""
    run = BatchGeneration(
        model, tokenizer, prompts, params, max_seq_len=max_seq_len, decoder=decoder
    )
    results = [GenerationResult(prompt_tokens=list(p)) for p in run.prompts]
    for r, p in zip(results, run.params):
        if p.logprobs is not None:
            r.logprobs = []
            r.top_logprobs = [] if p.logprobs > 0 else None
    for ev in run:
        r = results[ev.index]
        r.tokens.append(ev.token)
        r.text += ev.text
        if r.logprobs is not None and ev.logprob is not None:
            r.logprobs.append(ev.logprob)
        if r.top_logprobs is not None and ev.top_logprobs is not None:
            r.top_logprobs.append(ev.top_logprobs)
        if ev.finish_reason:
            r.finish_reason = ev.finish_reason
    for r, lp in zip(results, run.prompt_logprobs):
        r.prompt_logprobs = lp
    return results
