"""Paged key/value storage for the serving engine: a pool of fixed-size blocks per layer.

`PagedKVPool` is storage only. Each engine step builds a `PagedBatch` that says where this step's
tokens go (slot mapping) and which slots each sequence attends over (from its block table); the
model passes it to attention exactly as it passes the contiguous cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelArgs
from .attention import causal_attention


class PagedKVPool:
    def __init__(
        self,
        args: ModelArgs,
        num_blocks: int,
        block_size: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        slots = num_blocks * block_size
        shape = (slots, args.kv_heads, args.head_dim)  # one row per token slot
        # empty, not zeros: attention only gathers slots that were written, and untouched pages of
        # a large pool cost no resident memory on CPU until a request reaches them.
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.num_blocks, self.block_size = num_blocks, block_size

    @staticmethod
    def nbytes_for(args: ModelArgs, num_blocks: int, block_size: int, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return num_blocks * block_size * args.kv_bytes_per_token(itemsize)


@dataclass
class Segment:
    """One sequence's part of a flat batch: queries [q_start, q_start + q_len) attend over the
    slots in `key_slots` (all its positions so far, this step's included)."""

    q_start: int
    q_len: int
    key_slots: torch.Tensor


class PagedBatch:
    """The attention side of one engine step (passed to `Transformer.forward` as `cache`)."""

    def __init__(
        self, pool: PagedKVPool, slot_mapping: torch.Tensor, segments: list[Segment]
    ) -> None:
        self.pool, self.slot_mapping, self.segments = pool, slot_mapping, segments

    def attend(
        self, layer: int, start_pos: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q (1, n_heads, T, hd), k/v (1, n_kv_heads, T, hd) for the T tokens of this step."""
        pk, pv = self.pool.k[layer], self.pool.v[layer]
        pk[self.slot_mapping] = k[0].transpose(0, 1).to(pk.dtype)
        pv[self.slot_mapping] = v[0].transpose(0, 1).to(pv.dtype)
        outs = []
        for s in self.segments:
            keys = pk.index_select(0, s.key_slots).transpose(0, 1)[None]
            values = pv.index_select(0, s.key_slots).transpose(0, 1)[None]
            outs.append(causal_attention(q[:, :, s.q_start : s.q_start + s.q_len], keys, values))
        return torch.cat(outs, dim=2)
