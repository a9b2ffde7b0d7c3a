"""The paged KV-cache allocator: fixed-size blocks, reference counts, and prefix caching.

The block manager hands out block ids; the runner's KV pool stores position p of a sequence at flat
slot `block_table[p // block_size] * block_size + p % block_size`. A block that is full and whose
tokens are computed gets a chained hash (of the previous block's hash and its own tokens), so a later
sequence with the same token prefix reuses it instead of recomputing it. Freed blocks that carry a
hash stay reusable until their slot is needed: fresh blocks come from never-cached free blocks first,
then by evicting the least recently freed cached block. Pure Python, no torch.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from .config import cdiv
from .sequence import Sequence


def block_hash(prev: bytes, token_ids: list[int]) -> bytes:
    """Chained hash of one full block. A keyed digest, not Python's `hash`: tuple hashes of ints
    are unsalted and collisions can be crafted, which would let one request read another's cache."""
    return hashlib.blake2b(prev + array("q", token_ids).tobytes(), digest_size=16).digest()


def _root(seq: Sequence) -> bytes:
    """What the first block's hash chains from: an adapter changes every k/v, so each adapter's
    blocks are their own (ids are never reused); the base's chain is as it always was."""
    return seq.lora_id.to_bytes(8, "little") if seq.lora_id else b""


class BlockManager:
    """Owns the free list, reference counts and the hash -> block map of one KV pool."""

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._hash_to_block: dict[bytes, int] = {}
        # Free blocks without a hash (taken first), and free cached blocks in LRU order.
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._queried_tokens = 0
        self._hit_tokens = 0

    # ---- metrics -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds, cached ones included (they are evicted on demand)."""
        return len(self._free_plain) + len(self._free_cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences, 0..1."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_to_block)

    @property
    def prefix_hit_rate(self) -> float:
        """Prompt tokens served from the cache / prompt tokens looked up, over all allocations."""
        return self._hit_tokens / self._queried_tokens if self._queried_tokens else 0.0

    @property
    def queried_tokens(self) -> int:
        return self._queried_tokens

    @property
    def hit_tokens(self) -> int:
        return self._hit_tokens

    def ref_count(self, block_id: int) -> int:
        return self._ref[block_id]

    # ---- allocation ----------------------------------------------------------------------------
    def _match_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks of seq's longest cached full-block prefix, leaving its last token
        uncomputed so the model still produces logits for it."""
        if not self.enable_prefix_caching or seq.prompt_logprobs:
            return []
        blocks: list[int] = []
        for i in range((seq.num_tokens - 1) // self.block_size):
            bid = self._hash_to_block.get(self._seq_block_hash(seq, i))
            if bid is None:
                break
            blocks.append(bid)
        return blocks

    def _seq_block_hash(self, seq: Sequence, i: int) -> bytes:
        """The chained hash of seq's full block i, memoised on seq (tokens never change)."""
        hashes, bs = seq.block_hashes, self.block_size
        while len(hashes) <= i:
            j = len(hashes)
            prev = hashes[-1] if j else _root(seq)
            hashes.append(block_hash(prev, seq.token_ids[j * bs : (j + 1) * bs]))
        return hashes[i]

    def _blocks_to_allocate(self, seq: Sequence, hits: list[int]) -> tuple[int, int]:
        """(fresh blocks needed, free blocks left for them once the free cached hits are taken)."""
        fresh = cdiv(seq.num_tokens, self.block_size) - len(hits)
        taken_from_free = sum(1 for b in hits if self._ref[b] == 0)
        return fresh, self.num_free_blocks - taken_from_free

    def can_allocate(self, seq: Sequence, reserve: int = 0) -> bool:
        """Whether `allocate(seq)` would succeed and still leave `reserve` blocks free."""
        fresh, available = self._blocks_to_allocate(seq, self._match_prefix(seq))
        return fresh + reserve <= available

    def allocate(self, seq: Sequence) -> None:
        """Give seq blocks for all its tokens, reusing cached prefix blocks; those tokens count as
        computed. Raises RuntimeError when the pool is short (check `can_allocate` first)."""
        if seq.block_table:
            raise RuntimeError(f"{seq!r} already holds blocks")
        hits = self._match_prefix(seq)
        fresh, available = self._blocks_to_allocate(seq, hits)
        if fresh > available:
            raise RuntimeError(f"{seq!r} needs {fresh} blocks, {available} are free")
        for bid in hits:
            self._take(bid)
        seq.block_table = hits + [self._take_fresh() for _ in range(fresh)]
        seq.num_registered_blocks = len(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        if self.enable_prefix_caching:
            self._queried_tokens += seq.num_tokens
            self._hit_tokens += seq.num_computed_tokens

    def can_append(self, seq: Sequence, n: int = 1) -> bool:
        """Whether the block table can grow to hold `n` more computed tokens."""
        return self._blocks_needed(seq, n) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, n: int = 1) -> None:
        """Grow seq's block table to hold positions up to num_computed_tokens + n."""
        need = self._blocks_needed(seq, n)
        if need > self.num_free_blocks:
            raise RuntimeError(f"{seq!r} needs {need} more blocks, {self.num_free_blocks} free")
        seq.block_table.extend(self._take_fresh() for _ in range(need))

    def _blocks_needed(self, seq: Sequence, n: int) -> int:
        return max(0, cdiv(seq.num_computed_tokens + n, self.block_size) - len(seq.block_table))

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks; its K/V are forgotten (num_computed_tokens = 0). Tail blocks are
        released first so they are evicted before the shared head of a prompt."""
        for bid in reversed(seq.block_table):
            self._ref[bid] -= 1
            if self._ref[bid] == 0:
                if self._hash[bid] is not None:
                    self._free_cached[bid] = None
                else:
                    self._free_plain.append(bid)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = 0

    def commit(self, seq: Sequence) -> None:
        """Offer seq's newly full, computed blocks to the prefix cache (call after each step)."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        for i in range(seq.num_registered_blocks, full):
            h, bid = self._seq_block_hash(seq, i), seq.block_table[i]
            # A twin computed in the same batch keeps the first copy; this one stays private.
            if h not in self._hash_to_block and self._hash[bid] is None:
                self._hash[bid] = h
                self._hash_to_block[h] = bid
        seq.num_registered_blocks = max(seq.num_registered_blocks, full)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block no sequence holds (benchmarks that must not hit the cache)."""
        for bid in self._free_cached:
            del self._hash_to_block[self._hash[bid]]  # type: ignore[arg-type]
            self._hash[bid] = None
            self._free_plain.append(bid)
        self._free_cached.clear()

    # ---- slots ---------------------------------------------------------------------------------
    def slot(self, seq: Sequence, pos: int) -> int:
        """The flat KV slot that position `pos` of seq is written to and read from."""
        return seq.block_table[pos // self.block_size] * self.block_size + pos % self.block_size

    def slots(self, seq: Sequence, start: int, stop: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]

    # ---- internals -----------------------------------------------------------------------------
    def _take(self, bid: int) -> None:
        if self._ref[bid] == 0:
            del self._free_cached[bid]
        self._ref[bid] += 1

    def _take_fresh(self) -> int:
        if self._free_plain:
            bid = self._free_plain.pop()
        else:
            bid, _ = self._free_cached.popitem(last=False)
            del self._hash_to_block[self._hash[bid]]  # type: ignore[arg-type]
            self._hash[bid] = None
        self._ref[bid] = 1
        return bid
