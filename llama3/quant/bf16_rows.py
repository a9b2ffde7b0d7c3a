"""Many-row products (prompt chunks) in bfloat16 on CPUs with AMX.

A CPU with AMX tiles (Intel Sapphire Rapids and later) multiplies bfloat16 matrices ~6x faster
than float32 ones (PyTorch's bfloat16 GEMM goes through oneDNN to the tiles: ~1100 against ~175
GMAC/s on 2 Xeon cores). int8 codes are exact in bfloat16, so a prompt's products convert the codes
of a slab of rows and the activations to bfloat16, multiply there (float32 sums) and scale the
result in float32. The cost is the activations' and outputs' rounding to bfloat16 (2^-9 relative),
measured in BENCHMARKS.md's quality table; decoding (a few rows) keeps the int16-grid kernels.
A quantized model's prompt chunks also attend in bfloat16 (`attention_applies`; on AMX tiles,
`llama3_kernels::amx_attention`: 3-4x faster than float32 SDPA).
`LLAMA3_BF16_PREFILL=0` turns it off; CPUs without AMX never take it (their bfloat16 GEMM is
slower than float32). Serving steps never take it (`batch_invariant`): there a row count is an
accident of batching, and it must not change a token.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import torch

from .. import kernels

#: fewer rows than this (decode steps, short prompts) stay on the int16-grid kernels
MIN_ROWS = 64
#: set inside a serving step (`batch_invariant`): prompt rows stay on the int16-grid kernels. A
#: module global, not a ContextVar, which torch.compile cannot trace: one engine thread per
#: process runs serving steps, and the compiled decode step never sets it.
_batch_invariant = False
#: bfloat16 weights converted per step: the copy stays a few MB whatever the layer's size
_SLAB_BYTES = 8 << 20


@functools.cache
def _amx() -> bool:
    if os.environ.get("LLAMA3_BF16_PREFILL", "1") == "0":
        return False
    # oneDNN is what takes PyTorch's bfloat16 GEMM to the tiles
    return "amx_bf16" in kernels.cpu_flags().split() and torch.backends.mkldnn.is_available()


@contextlib.contextmanager
def batch_invariant(on: bool = True) -> Iterator[None]:
    """Inside (when `on`), no product or attention takes the bfloat16 path. A continuous-
    batching step holds as many rows as its batch happens to have (other prompts, the part of a
    prompt a prefix-cache hit leaves, a chunk boundary), and a path chosen by row count would
    let that change a request's tokens; outside a serving step a request's rows are its own."""
    global _batch_invariant
    before = _batch_invariant
    _batch_invariant = on or before
    try:
        yield
    finally:
        _batch_invariant = before


def applies(x: torch.Tensor) -> bool:
    """Whether a product of `x` (rows, in) takes this path (not under autograd: it writes into
    slices of a preallocated output)."""
    return (
        x.shape[0] >= MIN_ROWS
        and x.device.type == "cpu"
        and not x.requires_grad
        and not _batch_invariant
        and _amx()
    )


def attention_applies(q: torch.Tensor, cache: object) -> bool:
    """Whether a quantized model's attention for queries `q` (bsz, heads, seqlen, hd) runs in
    bfloat16: a prompt chunk of `MIN_ROWS` tokens or more in float32 on a CPU with AMX, outside
    autograd, and not a serving batch that also holds decode rows (those keep the float32
    native kernel)."""
    if q.dtype != torch.float32 or q.shape[2] < MIN_ROWS or q.device.type != "cpu":
        return False
    from ..model.paged_cache import PagedBatch  # (model imports this module)

    if isinstance(cache, PagedBatch) and cache.decodes:
        return False
    # never while fine-tuning, nor inside a serving step
    return not torch.is_grad_enabled() and not _batch_invariant and _amx()


def product(
    x: torch.Tensor,
    out_features: int,
    rows: Callable[[int, int], torch.Tensor],
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (M, in) float32 or bfloat16 times the transpose of the weights whose rows start..stop
    `rows(start, stop)` gives (any float dtype), times `scale` per output column when given:
    (M, out) float32."""
    xb = x.to(torch.bfloat16)
    step = max(1, _SLAB_BYTES // (2 * x.shape[1]))
    y = torch.empty(x.shape[0], out_features, dtype=torch.float32, device=x.device)
    for s in range(0, out_features, step):
        e = min(out_features, s + step)
        part = torch.mm(xb, rows(s, e).to(torch.bfloat16).t())
        if scale is None:
            y[:, s:e] = part
        elif kernels.available():  # widened and scaled in one pass
            torch.ops.llama3_kernels.scale_columns(part, scale[s:e], y[:, s:e])
        else:  # (PyTorch's mixed-dtype multiply would convert into a temporary first)
            y[:, s:e] = part
            y[:, s:e] *= scale[s:e]
    return y


def swiglu(
    x: torch.Tensor,
    hidden: int,
    rows: Callable[[int, int], torch.Tensor],
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """silu(x W1^T * s1) * (x W3^T * s3) as bfloat16 (M, hidden), for a fused w1/w3 layer whose
    rows 0..hidden are W1 and hidden..2 hidden are W3, scaled per row by `scale` (int8 codes;
    None: the rows are the weights).
    The gate and up products stay bfloat16 and one native pass makes w2's bfloat16 input from
    them (`llama3_kernels::swiglu_bf16`): the float32 gate/up matrix, the SiLU's and the
    product's outputs and w2's conversion of its input are never written. Needs the kernels."""
    xb = x.to(torch.bfloat16)
    if scale is None:
        scale = torch.ones(2 * hidden, device=x.device)
    out = torch.empty(x.shape[0], hidden, dtype=torch.bfloat16, device=x.device)
    step = max(1, _SLAB_BYTES // (4 * x.shape[1]))  # a gate slab and its up slab
    if step >= hidden:  # one product for both halves
        part = torch.mm(xb, rows(0, 2 * hidden).to(torch.bfloat16).t())
        torch.ops.llama3_kernels.swiglu_bf16(
            part[:, :hidden], part[:, hidden:], scale[:hidden], scale[hidden:], out
        )
        return out
    for s in range(0, hidden, step):
        e = min(hidden, s + step)
        gate = torch.mm(xb, rows(s, e).to(torch.bfloat16).t())
        up = torch.mm(xb, rows(hidden + s, hidden + e).to(torch.bfloat16).t())
        torch.ops.llama3_kernels.swiglu_bf16(
            gate, up, scale[s:e], scale[hidden + s : hidden + e], out[:, s:e]
        )
    return out


class PromptProducts:
    """What a quantized linear layer offers the feed-forward on this path (`FeedForward` asks):
    as a fused w1/w3 layer, a prompt's SwiGLU in bfloat16 (`swiglu`); as w2, its product of that
    bfloat16 input in float32. Layers say how their rows reach bfloat16 (`_prompt_rows`)."""

    in_features: int
    out_features: int

    def _prompt_rows(
        self,
    ) -> tuple[Callable[[int, int], torch.Tensor], torch.Tensor | None] | None:
        """(rows(start, stop) in a float dtype, per-row scale or None), or None where the
        native kernels cannot serve this layer."""
        raise NotImplementedError

    def prompt_swiglu(self, x: torch.Tensor) -> torch.Tensor | None:
        """silu(gate) * up as bfloat16 for a prompt chunk (float32 or bfloat16 rows) this path
        takes, this layer being a fused w1/w3 (gate rows, then up rows); None elsewhere (the
        caller runs the float32 path)."""
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype not in (torch.float32, torch.bfloat16) or not applies(x2):
            return None
        how = self._prompt_rows()
        if how is None:
            return None
        h = swiglu(x2.contiguous(), self.out_features // 2, *how)
        return h.reshape(*x.shape[:-1], -1)

    def float_product(self, x: torch.Tensor) -> torch.Tensor:
        """This layer's product of a bfloat16 `x` (`prompt_swiglu`'s output) in float32, which
        must not round to bfloat16 again; other inputs go through the layer's forward."""
        x2 = x.reshape(-1, self.in_features)
        how = self._prompt_rows() if x2.dtype == torch.bfloat16 and applies(x2) else None
        if how is None:
            return self(x.float())
        y = product(x2, self.out_features, *how)
        return y.reshape(*x.shape[:-1], self.out_features)
