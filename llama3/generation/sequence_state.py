"""Per-sequence generation state shared by every decoding loop (`generate` and the serving engine).

A `SequenceState` owns one sequence's sampling parameters, its private random generator, its
streaming detokenizer, its stop set and token history; `accept` turns a chosen token into a
`TokenEvent` and decides whether the sequence is finished. `sample_next_tokens` applies penalties,
biases and the samplers to a batch of such sequences at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..errors import ContextLengthExceeded, InvalidRequestError
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.streaming import IncrementalDetokenizer
from . import sampling
from .params import SamplingParams, TokenEvent


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    # One generator per sequence: its samples never depend on what else is in the batch, and the
    # global RNG is never reseeded.
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return g


def validate_prompt(prompt: Sequence[int], vocab_size: int, max_len: int) -> None:
    """Raise the typed error for an empty prompt, one that fills the context, or a bad token id."""
    if len(prompt) == 0:
        raise InvalidRequestError(
            "a prompt is empty", "give at least one token or character", param="prompt"
        )
    if len(prompt) >= max_len:
        raise ContextLengthExceeded(len(prompt), max_len)
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(
            f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
            "check the prompt token ids",
            param="prompt",
        )


class SequenceState:
    def __init__(
        self,
        index: int,
        prompt: Sequence[int],
        params: SamplingParams,
        tokenizer: BaseTokenizer,
        *,
        max_new: int,
        device: torch.device,
    ) -> None:
        self.index = index
        self.params = params
        self.max_new = max_new
        self.generator = make_generator(params.seed, device)
        self.detok = IncrementalDetokenizer(tokenizer, params.stop)
        model_stops = set() if params.ignore_eos else set(tokenizer.stop_tokens)
        self.stops = set(params.stop_token_ids) | model_stops
        self.history = list(prompt)  # prompt + generated, for the repetition penalty
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        #: the output constraint's grammar state (compiled here, at admission: a bad one raises)
        self.guide = None
        if params.guided is not None:
            from ..structured.matcher import make_guide

            self.guide = make_guide(params.guided, tokenizer)
            # the stop tokens the grammar allows once complete, if they end this sequence
            self._guide_stops = self.stops & set(self.guide.stop_ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, tok: int, logits: torch.Tensor) -> TokenEvent:
        """Record the chosen token (its raw-model logprobs from `logits`) and say if it finished."""
        self.history.append(tok)
        self.generated.append(tok)
        p = self.params
        lp = top = None
        if p.logprobs is not None:
            logp = torch.log_softmax(logits.float(), -1)
            lp = float(logp[tok])
            if p.logprobs > 0:
                vals, ids = torch.topk(logp, p.logprobs)
                top = list(zip(ids.tolist(), vals.tolist()))
        finish = None
        if self.guide is not None and tok not in self.stops:
            self.guide.accept(tok)
        if tok in self.stops:
            text, finish = self.detok.flush(), "stop"
        else:
            text = self.detok.add(tok)
            if self.detok.stopped:
                finish = "stop"
            elif len(self.generated) >= self.max_new:
                text += self.detok.flush()
                finish = "length"
            elif self.guide is not None and self.guide.complete and not self._guide_stops:
                text += self.detok.flush()  # complete, and no stop token may end it (ignore_eos)
                finish = "stop"
        self.finish_reason = finish
        return TokenEvent(self.index, tok, text, lp, top, finish)

    def finish_length(self) -> TokenEvent | None:
        """End the sequence for lack of room (context full) with whatever text is held back."""
        if self.done:
            return None
        self.finish_reason = "length"
        return TokenEvent(self.index, -1, self.detok.flush(), finish_reason="length")


def sample_next_tokens(states: Sequence[SequenceState], logits: torch.Tensor) -> list[int]:
    """Next token for each state from its row of `logits` (len(states), vocab)."""
    return sample_next_ids(states, logits).tolist()


def _plain_greedy(p: SamplingParams) -> bool:
    """The next token is the argmax of the raw logits (no penalty or bias changes them)."""
    return (
        p.temperature == 0
        and p.repetition_penalty == 1.0
        and not p.frequency_penalty
        and not p.presence_penalty
        and not p.logit_bias
    )


def sample_next_ids(states: Sequence[SequenceState], logits: torch.Tensor) -> torch.Tensor:
    """`sample_next_tokens` as a tensor on the logits' device. Plain greedy rows are one argmax,
    queued without waiting on the device (the pipelined decode loop relies on it)."""
    ps = [s.params for s in states]
    guided = [i for i, s in enumerate(states) if s.guide is not None]
    if guided:  # before every sampler, the greedy argmax included
        from ..structured.matcher import mask_logits

        logits = mask_logits(logits, guided, [states[i].guide for i in guided])
    if all(_plain_greedy(p) for p in ps):
        return sampling.greedy(logits)
    if any(p.repetition_penalty != 1.0 for p in ps):
        logits = sampling.apply_repetition_penalty(
            logits, [s.history for s in states], torch.tensor([p.repetition_penalty for p in ps])
        )
    if any(p.frequency_penalty or p.presence_penalty for p in ps):
        logits = sampling.apply_frequency_presence_penalties(
            logits,
            [s.generated for s in states],
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
        generators=[s.generator for s in states],
    )
    return nxt
