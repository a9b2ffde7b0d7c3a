"""One sequence's position in its grammar, and the batched logits mask of many such sequences.

`Guide.accept` advances the grammar by the sampled token; `mask_logits` computes the allowed
tokens of every constrained row of a batch at once (llguidance fills one bitmask per row on its
own threads, rows with different grammars alike) and sets the others to -inf. Once a grammar is
complete, its mask holds only the stop tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.torch as llt
import numpy as np
import torch

from ..errors import InvalidRequestError
from ..tokenizer.base import BaseTokenizer
from .compiler import CompiledGuide, compiler_for
from .spec import GuidedDecoding

_executor: llguidance.LLExecutor | None = None
_BITS = torch.arange(32, dtype=torch.int32)


class Guide:
    """The grammar state of one sequence."""

    def __init__(self, compiled: CompiledGuide, vocab_size: int, stop_ids: Sequence[int]) -> None:
        self.key = compiled.key
        self.matcher = compiled.template.deep_copy()
        self.vocab_size = vocab_size
        #: the tokens a complete grammar allows
        self.stop_ids = tuple(stop_ids)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            # the mask allowed only tokens the grammar takes: this is a bug, not a user error
            raise RuntimeError(
                f"token {token} broke the output constraint: {self.matcher.get_error()}"
            )

    @property
    def complete(self) -> bool:
        """No text can follow: only a stop token (or nothing) is left to generate."""
        return self.matcher.is_stopped()


def make_guide(guided: GuidedDecoding, tokenizer: BaseTokenizer) -> Guide:
    """Compile (cached) and start a guide; an invalid or unsupported constraint raises
    `InvalidRequestError` here, at admission, before any token is generated."""
    compiler = compiler_for(tokenizer)
    return Guide(compiler.compile(guided), compiler.vocab.size, compiler.vocab.stop_ids)


def mask_logits(logits: torch.Tensor, rows: Sequence[int], guides: Sequence[Guide]) -> torch.Tensor:
    """A copy of `logits` (batch, vocab) with the tokens `guides[i]` forbids at row `rows[i]`
    set to -inf; the input is left as it is (logprobs are the raw model's)."""
    global _executor
    if _executor is None:
        _executor = llguidance.LLExecutor()
    n, width = len(rows), logits.shape[-1]
    bitmask = llt.allocate_token_bitmask(n, guides[0].vocab_size)
    llt.fill_next_token_bitmask_par(
        _executor, [(g.matcher, i) for i, g in enumerate(guides)], bitmask
    )
    for g in guides:
        if g.matcher.is_error():
            raise InvalidRequestError(
                f"the output constraint failed: {g.matcher.get_error().strip().splitlines()[0]}",
                "simplify the schema or grammar",
                param="response_format",
            )
    out = logits.clone()
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        # numpy, one thread: torch's elementwise ops on a busy CPU wait on their thread pool
        # longer than the work takes (~50 ms against 0.1 ms measured here)
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")
        o = out.numpy()
        for i, r in enumerate(rows):
            forbid = bits[i, :width] == 0
            np.putmask(o[r, : forbid.shape[0]], forbid, -np.inf)
            o[r, forbid.shape[0] :] = -np.inf  # logits padded past the tokenizer's vocabulary
        return out
    dev = bitmask.to(logits.device, non_blocking=True)
    allowed = ((dev.unsqueeze(-1) >> _BITS.to(logits.device)) & 1).view(n, -1)[:, :width].bool()
    if allowed.shape[1] < width:
        allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]))
    idx = torch.tensor(list(rows), device=logits.device)
    out.index_copy_(0, idx, out.index_select(0, idx).masked_fill_(~allowed, float("-inf")))
    return out
