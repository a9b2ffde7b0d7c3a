"""Contiguous key/value cache for the `generate` path: storage only, no policy.

Allocated by the caller (never by the model's constructor) for a batch size and context length chosen
at run time, in the layout SDPA consumes: (batch, n_kv_heads, max_seq_len, head_dim) per layer.
"""

from __future__ import annotations

import torch

from ..config import ModelArgs
from .attention import causal_attention


class KVCache:
    def __init__(
        self,
        args: ModelArgs,
        max_batch_size: int,
        max_seq_len: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        zeroed: bool = False,
    ) -> None:
        shape = (max_batch_size, args.kv_heads, max_seq_len, args.head_dim)
        # empty, not zeros: every read is of positions :end, all written before they are read, so
        # a zero fill only costs time before the first token (~14 ms of a short prompt) and
        # touches pages a short answer never uses. `zeroed` is for readers of a masked window.
        alloc = torch.zeros if zeroed else torch.empty
        self.k = [alloc(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [alloc(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len

    @staticmethod
    def nbytes_for(
        args: ModelArgs, max_batch_size: int, max_seq_len: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return max_batch_size * max_seq_len * args.kv_bytes_per_token(itemsize)

    def update(
        self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (bsz, n_kv_heads, seqlen, head_dim) at `start_pos`; return keys/values so far."""
        bsz, _, seqlen, _ = k.shape
        end = start_pos + seqlen
        ck, cv = self.k[layer], self.v[layer]
        ck[:bsz, :, start_pos:end] = k
        cv[:bsz, :, start_pos:end] = v
        return ck[:bsz, :, :end], cv[:bsz, :, :end]

    def attend(
        self, layer: int, start_pos: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Store this step's k/v, then attend over everything cached for these rows."""
        keys, values = self.update(
            layer, start_pos, k.to(self.k[layer].dtype), v.to(self.v[layer].dtype)
        )
        return causal_attention(q, keys, values)
