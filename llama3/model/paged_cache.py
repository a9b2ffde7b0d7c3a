"""Paged key/value storage for the serving engine: a pool of fixed-size blocks per layer.

`PagedKVPool` is storage only. Each engine step builds a `PagedBatch` that says where this step's
tokens go (slot mapping) and which slots each sequence attends over (from its block table); the
model passes it to attention exactly as it passes the contiguous cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import kernels
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
        #: decode rows attend with the native CPU kernel, reading the slots where they are
        #: (the portable path gathers every row's keys into a padded copy, per layer)
        self.native = kernels.native_attention(self.k[0])

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
    #: a generated token fed back (one query); not given: any one-query segment counts as one. A
    #: prompt's last token left alone by a prefix-cache hit or a chunk boundary is not one: it
    #: attends and multiplies as the rest of its prompt did, so its answer is the lone one.
    decode: bool | None = None

    def __post_init__(self) -> None:
        if self.decode is None:
            self.decode = self.q_len == 1


class PagedBatch:
    """The attention side of one engine step (passed to `Transformer.forward` as `cache`)."""

    def __init__(
        self, pool: PagedKVPool, slot_mapping: torch.Tensor, segments: list[Segment]
    ) -> None:
        self.pool, self.slot_mapping, self.segments = pool, slot_mapping, segments
        # Decode segments (one query each) attend together in one padded call per layer; the
        # gather index and mask are built once per step and shared by every layer.
        self.decodes = [s for s in segments if s.decode]
        self.prefills = [s for s in segments if not s.decode]
        self._decode_plan: tuple[torch.Tensor, ...] | None = None

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._decode_plan is None:
            dev = self.slot_mapping.device
            slots = torch.nn.utils.rnn.pad_sequence(
                [s.key_slots for s in self.decodes], batch_first=True
            )
            lengths = torch.tensor([len(s.key_slots) for s in self.decodes], device=dev)
            valid = torch.arange(slots.shape[1], device=dev)[None, :] < lengths[:, None]
            # padding reads the sequence's own first slot (written, finite: the pool is not
            # zeroed) and is masked out
            slots = torch.where(valid, slots, slots[:, :1])
            rows = torch.tensor([s.q_start for s in self.decodes], device=dev)
            self._decode_plan = (slots, valid[:, None, None, :], rows, lengths)
        return self._decode_plan

    def attend(
        self, layer: int, start_pos: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q (1, n_heads, T, hd), k/v (1, n_kv_heads, T, hd) for the T tokens of this step."""
        pk, pv = self.pool.k[layer], self.pool.v[layer]
        pk[self.slot_mapping] = k[0].transpose(0, 1).to(pk.dtype)
        pv[self.slot_mapping] = v[0].transpose(0, 1).to(pv.dtype)
        if not self.decodes and len(self.prefills) == 1:
            s = self.prefills[0]
            return self._segment(pk, pv, q, s)
        out = torch.empty_like(q)
        if self.decodes:
            slots, mask, rows, lengths = self._plan()
            qd = q[0].index_select(1, rows).transpose(0, 1)  # (B, n_heads, hd)
            if self.pool.native and q.dtype == torch.float32:
                o = torch.ops.llama3_kernels.paged_decode_attention(
                    qd, pk, pv, slots, lengths, q.shape[-1] ** -0.5
                )
            else:
                keys = pk[slots].transpose(1, 2).to(q.dtype)  # (B, n_kv, L, hd)
                values = pv[slots].transpose(1, 2).to(q.dtype)
                o = F.scaled_dot_product_attention(
                    qd[:, :, None],
                    keys,
                    values,
                    attn_mask=mask,
                    enable_gqa=q.shape[1] != k.shape[1],
                )[:, :, 0]
            out[0].index_copy_(1, rows, o.transpose(0, 1))
        for s in self.prefills:
            out[:, :, s.q_start : s.q_start + s.q_len] = self._segment(pk, pv, q, s)
        return out

    @staticmethod
    def _segment(pk: torch.Tensor, pv: torch.Tensor, q: torch.Tensor, s: Segment) -> torch.Tensor:
        keys = pk.index_select(0, s.key_slots).transpose(0, 1)[None]
        values = pv.index_select(0, s.key_slots).transpose(0, 1)[None]
        return causal_attention(q[:, :, s.q_start : s.q_start + s.q_len], keys, values)
