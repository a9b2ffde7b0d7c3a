"""Rank 0 drives, the other ranks follow: one model call at a time, mirrored.

On rank 0 every `Transformer.logits` call is first announced over the control group (its token
ids, positions and a description of its cache); each follower replays it on its own shard with
its own cache of the same shape. So everything rank 0 runs on top of the model — the console
chat, the batched generator, the continuous-batching engine and the HTTP server — runs unchanged
over a tensor-parallel model, and only rank 0 samples, prints or talks to the network.

Caches are mirrored by identity: a follower keeps one KV cache (or paged pool) per rank-0
cache object and drops it when rank 0's is garbage-collected.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..model.kv_cache import KVCache
from ..model.paged_cache import PagedBatch, PagedKVPool, Segment
from .group import TensorParallel

_STOP = "stop"
_CALL = "call"


def _cpu(x: Any) -> Any:
    return x.cpu() if isinstance(x, torch.Tensor) else x


class Driver:
    """Rank 0's side: announce each model call before running it."""

    def __init__(self, tp: TensorParallel) -> None:
        self.tp = tp
        self._known: set[int] = set()
        self._freed: list[int] = []
        self.closed = False

    def _track(self, obj: object) -> int:
        key = id(obj)
        if key not in self._known:
            self._known.add(key)
            weakref.finalize(obj, self._forget, key)
        return key

    def _forget(self, key: int) -> None:
        self._known.discard(key)
        self._freed.append(key)

    def _describe(self, cache: Any) -> Any:
        if cache is None:
            return None
        if isinstance(cache, KVCache):
            return ("kv", self._track(cache), cache.max_batch_size, cache.max_seq_len)
        if isinstance(cache, PagedBatch):
            pool = cache.pool
            segs = [(s.q_start, s.q_len, _cpu(s.key_slots), s.decode) for s in cache.segments]
            return (
                "paged",
                self._track(pool),
                pool.num_blocks,
                pool.block_size,
                _cpu(cache.slot_mapping),
                segs,
            )
        raise TypeError(f"a tensor-parallel model cannot mirror a {type(cache).__name__}")

    def announce(self, tokens, start_pos, cache, last_only, positions, logits_indices) -> None:
        freed, self._freed = self._freed, []
        msg = (
            _CALL,
            freed,
            _cpu(tokens),
            _cpu(start_pos),
            self._describe(cache),
            last_only,
            _cpu(positions),
            _cpu(logits_indices),
        )
        self.tp.broadcast_object(msg)

    def close(self) -> None:
        """Tell the followers to return (once; a peer already gone is not an error here)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.tp.broadcast_object((_STOP,))
        except Exception:
            pass


def follow(model: torch.nn.Module, tp: TensorParallel) -> None:
    """A follower's loop: replay rank 0's model calls until it says stop (or fails: then the
    collective's `TensorParallelError` propagates)."""
    caches: dict[int, Any] = {}
    dev, dt = model.device, model.dtype
    while True:
        msg = tp.broadcast_object()
        if msg[0] == _STOP:
            return
        _, freed, tokens, start_pos, desc, last_only, positions, logits_indices = msg
        for key in freed:
            caches.pop(key, None)
        cache = None
        if desc is not None and desc[0] == "kv":
            _, key, bsz, max_len = desc
            cache = caches.get(key)
            if cache is None:
                cache = caches[key] = KVCache(model.params, bsz, max_len, device=dev, dtype=dt)
        elif desc is not None:
            _, key, num_blocks, block_size, slots, segs = desc
            pool = caches.get(key)
            if pool is None:
                pool = caches[key] = PagedKVPool(
                    model.params, num_blocks, block_size, device=dev, dtype=dt
                )
            cache = PagedBatch(
                pool, slots.to(dev), [Segment(q, n, k.to(dev), d) for q, n, k, d in segs]
            )
        with torch.inference_mode():
            model.logits(
                tokens.to(dev),
                start_pos.to(dev) if isinstance(start_pos, torch.Tensor) else start_pos,
                cache,
                last_only=last_only,
                positions=None if positions is None else positions.to(dev),
                logits_indices=None if logits_indices is None else logits_indices.to(dev),
            )
