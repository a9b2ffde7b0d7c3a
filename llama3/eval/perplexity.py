"""Perplexity over a text with a sliding window, and KL divergence against a reference model.

The text is tokenized once (BOS first when the tokenizer wants one). Windows of `ctx` tokens start
every `stride` tokens; each scores only the tokens no earlier window scored, so every token after
the first is scored once, with at least `ctx - stride` tokens of context before it (Hugging
Face's recipe; with stride == ctx, each window's first token has no context and is skipped). With a reference model (same vocabulary), the same windows give
KL(reference || model) of the next-token distributions at every scored position, averaged, and
how often both pick the same top token — what llama.cpp's `--kl-divergence` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidRequestError
from ..model.transformer import Transformer


@dataclass(frozen=True)
class PerplexityResult:
    tokens_scored: int
    #: mean negative log-likelihood, nats per token
    nll: float
    windows: int
    #: mean KL(reference || model), nats per token; None without a reference
    kl_divergence: float | None = None
    #: share of scored positions where both models' most likely token agree
    top1_agreement: float | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


def windows(n_tokens: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) per window; positions are token indices."""
    if ctx < 2 or not 1 <= stride <= ctx:
        raise InvalidRequestError(
            f"need ctx >= 2 and 1 <= stride <= ctx, got ctx={ctx}, stride={stride}",
            "use e.g. --ctx 512 --stride 256",
        )
    out, scored_to, begin = [], 0, 0
    while scored_to < n_tokens:
        end = min(begin + ctx, n_tokens)
        # a window's first token has no context inside it: never scored (with stride == ctx the
        # first token of every window is skipped, exactly as in Hugging Face's recipe)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append((begin, end, first))
        scored_to = end
        begin += stride
    return out


@torch.inference_mode()
def perplexity(
    model: Transformer,
    tokens: list[int],
    *,
    ctx: int = 512,
    stride: int = 256,
    reference: Transformer | None = None,
) -> PerplexityResult:
    if len(tokens) < 2:
        raise InvalidRequestError(
            f"the text has {len(tokens)} token(s); perplexity needs at least 2",
            "give a longer text",
        )
    if reference is not None and reference.params.vocab_size != model.params.vocab_size:
        raise InvalidRequestError(
            f"the reference model's vocabulary ({reference.params.vocab_size}) differs from the "
            f"model's ({model.params.vocab_size})",
            "compare models that share a tokenizer (e.g. a quantized model and its float original)",
        )
    device = model.device
    ids = torch.tensor(tokens, device=device)
    nll_sum, kl_sum, agree, scored = 0.0, 0.0, 0, 0
    plan = windows(len(tokens), ctx, stride)
    for begin, end, first in plan:
        x = ids[begin:end][None]
        # logits at position p predict token p + 1: score positions first..end-1 from rows
        # first-1-begin .. end-2-begin
        lo, hi = first - 1 - begin, end - 1 - begin
        logp = torch.log_softmax(model(x)[0, lo:hi].float(), -1)
        target = ids[first:end]
        nll_sum -= logp.gather(1, target[:, None]).sum().item()
        scored += end - first
        if reference is not None:
            ref = torch.log_softmax(reference(x.to(reference.device))[0, lo:hi].float(), -1)
            ref = ref.to(logp.device)
            kl_sum += (ref.exp() * (ref - logp)).sum().item()
            agree += int((ref.argmax(-1) == logp.argmax(-1)).sum().item())
    return PerplexityResult(
        tokens_scored=scored,
        nll=nll_sum / scored,
        windows=len(plan),
        kl_divergence=kl_sum / scored if reference is not None else None,
        top1_agreement=agree / scored if reference is not None else None,
    )
