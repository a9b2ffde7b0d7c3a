"""Batched generation over a contiguous KV cache, as a stream of `TokenEvent`s.

Prompts are left-aligned, as in Meta's `Llama.generate`: the common prefix is prefilled in one
forward pass, then one position per step; rows whose prompt is longer keep their prompt tokens
(teacher forcing) until they start generating. Every front end (Meta's text/chat completion, the
console chat, streaming) consumes this one stream, so streamed and non-streamed text agree.
This module knows token ids and the tokenizer interface, not chat formats or HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch

from ..errors import ContextLengthExceeded, InvalidRequestError
from ..model.kv_cache import KVCache
from ..model.transformer import Transformer
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.streaming import IncrementalDetokenizer
from . import sampling
from .params import GenerationResult, SamplingParams, TokenEvent


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    # One generator per sequence: its samples never depend on what else is in the batch, and the
    # global RNG is never reseeded.
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return g


class BatchGeneration:
    """Iterate to get `TokenEvent`s; `prompt_logprobs[i]` is filled for rows with `echo`."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: BaseTokenizer,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        *,
        max_seq_len: int,
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
            if len(p) == 0:
                raise InvalidRequestError(
                    "a prompt is empty", "give at least one token or character", param="prompt"
                )
            if len(p) >= max_seq_len:
                raise ContextLengthExceeded(len(p), max_seq_len)
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise InvalidRequestError(
                    f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                    "check the prompt token ids",
                    param="prompt",
                )
        self.model, self.tokenizer = model, tokenizer
        self.prompts = [list(p) for p in prompts]
        self.params = list(params)
        self.max_seq_len = max_seq_len
        self.prompt_logprobs: list[list[float] | None] = [
            [0.0] if p.echo else None for p in self.params
        ]

    def __iter__(self) -> Iterator[TokenEvent]:
        model, prompts, params = self.model, self.prompts, self.params
        device = model.tok_embeddings.weight.device
        bsz = len(prompts)
        lens = [len(p) for p in prompts]
        room = [self.max_seq_len - n for n in lens]
        max_new = [min(p.max_tokens or r, r) for p, r in zip(params, room)]
        total_len = max(n + m for n, m in zip(lens, max_new))
        min_len = min(lens)

        tokens = torch.zeros((bsz, total_len), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        cache = KVCache(
            model.params, bsz, total_len, device=device, dtype=model.tok_embeddings.weight.dtype
        )
        gens = [_generator(p.seed, device) for p in params]
        detoks = [IncrementalDetokenizer(self.tokenizer, p.stop) for p in params]
        model_stops = set(self.tokenizer.stop_tokens)
        stops = [set(p.stop_token_ids) | (set() if p.ignore_eos else model_stops) for p in params]
        history = [list(p) for p in prompts]  # prompt + generated, for the penalties
        generated: list[list[int]] = [[] for _ in prompts]
        done = [False] * bsz
        want_echo = any(p.echo for p in params)

        prev_pos = 0
        for cur_pos in range(min_len, total_len):
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
            active = [i for i in range(bsz) if not done[i] and cur_pos >= lens[i]]
            drawn = self._sample(last, active, history, generated, gens) if active else {}
            for i in range(bsz):
                if done[i]:
                    continue
                if cur_pos < lens[i]:  # still inside this row's prompt: keep the prompt token
                    lp = self.prompt_logprobs[i]
                    if lp is not None:
                        lp.append(float(torch.log_softmax(last[i], -1)[tokens[i, cur_pos]]))
                    continue
                tok = drawn[i]
                tokens[i, cur_pos] = tok
                history[i].append(tok)
                generated[i].append(tok)
                yield self._event(
                    i, tok, last[i], detoks[i], stops[i], len(generated[i]) >= max_new[i], done
                )
            prev_pos = cur_pos
            if all(done):
                break

    # ---- helpers ---------------------------------------------------------------------------------
    def _record_prompt_logprobs(
        self, logits: torch.Tensor, targets: torch.Tensor, first_pos: int
    ) -> None:
        lps = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, acc in enumerate(self.prompt_logprobs):
            if acc is None:
                continue
            n = len(self.prompts[i]) - first_pos  # prompt positions of row i inside this chunk
            acc.extend(lps[i, : max(0, n)].tolist())

    def _sample(self, last, active, history, generated, gens) -> dict[int, int]:
        rows = [last[i] for i in active]
        logits = torch.stack(rows)
        ps = [self.params[i] for i in active]
        if any(p.repetition_penalty != 1.0 for p in ps):
            logits = sampling.apply_repetition_penalty(
                logits,
                [history[i] for i in active],
                torch.tensor([p.repetition_penalty for p in ps]),
            )
        if any(p.frequency_penalty or p.presence_penalty for p in ps):
            logits = sampling.apply_frequency_presence_penalties(
                logits,
                [generated[i] for i in active],
                torch.tensor([p.frequency_penalty for p in ps]),
                torch.tensor([p.presence_penalty for p in ps]),
            )
        if any(p.logit_bias for p in ps):
            logits = sampling.apply_logit_bias(logits, [p.logit_bias for p in ps])
        nxt = sampling.sample_next(
            logits,
            temperature=torch.tensor([p.temperature for p in ps]),
            top_k=torch.tensor([p.top_k for p in ps]),
            top_p=torch.tensor([p.top_p for p in ps]),
            min_p=torch.tensor([p.min_p for p in ps]),
            generators=[gens[i] for i in active],
        )
        return dict(zip(active, nxt.tolist()))

    def _event(self, i, tok, last, detok, stops, at_limit, done) -> TokenEvent:
        p = self.params[i]
        lp = top = None
        if p.logprobs is not None:
            logp = torch.log_softmax(last, -1)
            lp = float(logp[tok])
            if p.logprobs > 0:
                vals, ids = torch.topk(logp, p.logprobs)
                top = list(zip(ids.tolist(), vals.tolist()))
        finish = None
        if tok in stops:
            text, finish = detok.flush(), "stop"
        else:
            text = detok.add(tok)
            if detok.stopped:
                finish = "stop"
            elif at_limit:
                text += detok.flush()
                finish = "length"
        if finish:
            done[i] = True
        return TokenEvent(i, tok, text, lp, top, finish)


def generate(
    model: Transformer,
    tokenizer: BaseTokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    max_seq_len: int,
) -> list[GenerationResult]:
    """Run `BatchGeneration` to the end and collect one `GenerationResult` per prompt."""
    run = BatchGeneration(model, tokenizer, prompts, params, max_seq_len=max_seq_len)
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
