"""A key/value cache whose decode steps have static shapes, so a compiled step is reused.

Allocated once per batch size for the longest context (as Meta's reference allocates its cache at
build time). A decode step passes its position as a tensor: the new keys/values are
written with `index_copy_` and the step attends over a window of the cache, masked beyond the
position. Windows are a few buckets (256, 512, ... up to the cache length), so attention reads at
most about twice the keys it needs; the window length comes from the `visible` mask, which a
compiler treats as a dynamic size, so one graph serves every window.
Prefill (an int start position) uses the contiguous cache's path unchanged.
"""

from __future__ import annotations

import torch

from .. import kernels
from .kv_cache import KVCache

#: the smallest window a decode step attends over
MIN_WINDOW = 256


def windows(max_seq_len: int, smallest: int = MIN_WINDOW) -> list[int]:
    """The window buckets for a cache of `max_seq_len` positions: doubling, the last one full."""
    out, w = [], smallest
    while w < max_seq_len:
        out.append(w)
        w *= 2
    return out + [max_seq_len]


def window_for(position: int, max_seq_len: int, smallest: int = MIN_WINDOW) -> int:
    """The smallest window bucket that holds keys 0..position."""
    return next(w for w in windows(max_seq_len, smallest) if w > position)


class StaticKVCache(KVCache):
    """Allocated per batch size (see `CompiledDecoder.cache_for`): a decode step writes every row."""

    #: which keys of the window a decode step sees (bool, shape (window,)); its length is the
    #: window, set per step by the caller (see `CompiledDecoder.step`)
    visible: torch.Tensor | None = None

    def __init__(self, *args, **kwargs) -> None:
        # zeroed: the masked window below reads keys past the position, and 0 x NaN of an
        # uninitialized slot would be NaN despite a zero probability
        super().__init__(*args, zeroed=True, **kwargs)
        #: a decode step attends with the native CPU kernel, which reads exactly the keys written
        #: so far (no window, no mask; 1.8 ms of a 10 ms step was the windowed attention)
        self.native = kernels.native_attention(self.k[0])

    def attend(
        self,
        layer: int,
        start_pos: int | torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        if isinstance(start_pos, int):
            return super().attend(layer, start_pos, q, k, v)
        # one new position per row, the same for all rows: `start_pos` has shape (1,)
        bsz = q.shape[0]
        ck, cv = self.k[layer], self.v[layer]
        ck.index_copy_(2, start_pos, k.to(ck.dtype))
        cv.index_copy_(2, start_pos, v.to(cv.dtype))
        hd = q.shape[-1]
        if self.native and q.dtype == torch.float32:
            return torch.ops.llama3_kernels.decode_attention(q, ck, cv, start_pos, hd**-0.5)
        visible = self.visible
        if visible is None:
            raise RuntimeError("set StaticKVCache.visible before a decode step")
        window = visible.shape[0]
        keys = ck[:, :, :window].to(q.dtype)
        values = cv[:, :, :window].to(q.dtype)
        # One query per row: written as broadcasts and sums, which the compiler fuses into a few
        # loops (an SDPA or bmm call costs ~0.05-0.1 ms here, twice per layer). Query heads are
        # grouped by the kv head they read: heads j*group .. (j+1)*group-1 read kv head j.
        n_kv = keys.shape[1]
        qg = q.reshape(bsz, n_kv, -1, 1, hd)  # (bsz, n_kv, group, 1, hd)
        scores = (qg * keys[:, :, None]).sum(-1) * hd**-0.5  # (bsz, n_kv, group, window)
        probs = torch.softmax(scores.float().masked_fill(~visible, float("-inf")), dim=-1)
        out = (probs.to(q.dtype)[..., None] * values[:, :, None]).sum(-2)  # (bsz, n_kv, group, hd)
        return out.reshape(bsz, -1, 1, hd)
