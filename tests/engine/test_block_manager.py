"""BlockManager: allocation, free, slots, reference counts, prefix caching and LRU eviction."""

from __future__ import annotations

import pytest

from llama3.engine.block_manager import BlockManager, block_hash
from llama3.engine.sequence import Sequence


def seq(tokens: list[int], seq_id: str = "s") -> Sequence:
    return Sequence(seq_id, tokens)


def computed(bm: BlockManager, s: Sequence, n: int | None = None) -> Sequence:
    """Pretend the runner computed the first n tokens (all by default), then commit."""
    s.num_computed_tokens = s.num_tokens if n is None else n
    bm.commit(s)
    return s


def check(bm: BlockManager, *held: Sequence) -> None:
    """Every block is free or referenced, and ref counts equal the tables holding the block."""
    counts = [0] * bm.num_blocks
    for s in held:
        assert len(set(s.block_table)) == len(s.block_table), "a table holds a block twice"
        for b in s.block_table:
            counts[b] += 1
    plain, cached = bm._free_plain, list(bm._free_cached)
    assert len(set(plain)) == len(plain) and not set(plain) & set(cached)
    for b in range(bm.num_blocks):
        assert bm.ref_count(b) == counts[b], f"block {b}"
        is_free = b in plain or b in bm._free_cached
        assert is_free == (counts[b] == 0), f"block {b}"
        if b in plain:
            assert bm._hash[b] is None
        if b in bm._free_cached:
            assert bm._hash[b] is not None
    for h, b in bm._hash_to_block.items():
        assert bm._hash[b] == h
    assert sum(h is not None for h in bm._hash) == len(bm._hash_to_block)


# ---- allocation round trips -----------------------------------------------------------------


def test_allocate_free_round_trip():
    bm = BlockManager(8, 4)
    a = seq(list(range(10)))
    assert bm.can_allocate(a)
    bm.allocate(a)
    assert len(a.block_table) == 3 and a.num_computed_tokens == 0
    assert bm.num_free_blocks == 5 and bm.usage == pytest.approx(3 / 8)
    check(bm, a)
    bm.free(a)
    assert a.block_table == [] and bm.num_free_blocks == 8 and bm.usage == 0.0
    check(bm)


def test_many_round_trips_leave_the_pool_whole():
    bm = BlockManager(16, 4)
    for i in range(50):
        s = seq([i] * (1 + i % 30), f"s{i}")
        bm.allocate(s)
        computed(bm, s)
        check(bm, s)
        bm.free(s)
    check(bm)
    assert bm.num_free_blocks == 16 and bm.usage == 0.0


def test_distinct_sequences_never_share_a_block():
    bm = BlockManager(12, 4)
    seqs = [seq([i] * 9, f"s{i}") for i in range(4)]
    for s in seqs:
        bm.allocate(s)
    blocks = [b for s in seqs for b in s.block_table]
    assert len(blocks) == len(set(blocks)) == 12
    check(bm, *seqs)
    assert not bm.can_allocate(seq([9]))


def test_allocate_short_pool_raises_with_message():
    bm = BlockManager(2, 4)
    big = seq(list(range(9)))
    assert not bm.can_allocate(big)
    with pytest.raises(RuntimeError, match="needs 3 blocks, 2 are free"):
        bm.allocate(big)
    check(bm)


def test_allocate_twice_raises():
    bm = BlockManager(4, 4)
    a = seq([1, 2, 3])
    bm.allocate(a)
    with pytest.raises(RuntimeError, match="already holds blocks"):
        bm.allocate(a)


def test_reserve_leaves_blocks_free():
    bm = BlockManager(4, 4)
    a = seq(list(range(8)))  # 2 blocks
    assert bm.can_allocate(a, reserve=2)
    assert not bm.can_allocate(a, reserve=3)


def test_bad_sizes():
    with pytest.raises(ValueError, match="must be positive"):
        BlockManager(0, 4)


# ---- slots and growth -------------------------------------------------------------------------


def test_slot_mapping():
    bm = BlockManager(8, 4)
    bm.allocate(seq([0] * 5, "pad"))  # so the next table does not start at block 0
    a = seq(list(range(7)))
    bm.allocate(a)
    for p in range(7):
        b = a.block_table[p // 4]
        assert bm.slot(a, p) == b * 4 + p % 4
    assert bm.slots(a, 2, 7) == [bm.slot(a, p) for p in range(2, 7)]
    assert len(set(bm.slots(a, 0, 7))) == 7


def test_append_slots_grows_only_at_block_boundaries():
    bm = BlockManager(4, 4)
    a = seq(list(range(7)))
    bm.allocate(a)
    computed(bm, a, 7)
    assert bm.can_append(a, 1)
    bm.append_slots(a, 1)  # position 7 is still in block 1
    assert len(a.block_table) == 2 and bm.num_free_blocks == 2
    a.append_token(7)
    computed(bm, a, 8)
    bm.append_slots(a, 1)  # position 8 opens block 2
    assert len(a.block_table) == 3 and bm.num_free_blocks == 1
    bm.append_slots(a, 5)  # positions 8..12 need block 3 too
    assert len(a.block_table) == 4 and bm.num_free_blocks == 0
    check(bm, a)
    assert not bm.can_append(a, 9)
    with pytest.raises(RuntimeError, match="needs 1 more blocks, 0 free"):
        bm.append_slots(a, 9)


def test_free_forgets_computed_tokens():
    bm = BlockManager(4, 4)
    a = seq(list(range(6)))
    bm.allocate(a)
    computed(bm, a)
    bm.free(a)
    assert a.num_computed_tokens == 0 and a.block_table == [] and a.num_registered_blocks == 0


# ---- prefix caching ---------------------------------------------------------------------------


def test_shared_prefix_reuses_blocks_and_counts_refs():
    bm = BlockManager(16, 4)
    system = list(range(100, 108))  # two full blocks
    a = seq(system + [1, 2], "a")
    bm.allocate(a)
    computed(bm, a)
    assert bm.num_cached_blocks == 2
    b = seq(system + [3, 4, 5], "b")
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert b.num_computed_tokens == 8
    assert [bm.ref_count(x) for x in b.block_table] == [2, 2, 1]
    check(bm, a, b)
    assert bm.prefix_hit_rate == pytest.approx(8 / (10 + 11))
    bm.free(a)
    assert [bm.ref_count(x) for x in b.block_table] == [1, 1, 1]
    check(bm, b)
    bm.free(b)
    check(bm)
    assert bm.num_free_blocks == 16 and bm.num_cached_blocks == 2


def test_system_prompt_hits_across_many_requests():
    bm = BlockManager(32, 4)
    system = list(range(50, 62))  # three blocks
    first = seq(system + [0], "first")
    bm.allocate(first)
    computed(bm, first)
    bm.free(first)
    users = [seq(system + [i, i + 1], f"u{i}") for i in range(5)]
    for u in users:
        bm.allocate(u)
        assert u.num_computed_tokens == 12
        assert u.block_table[:3] == users[0].block_table[:3]
    assert bm.ref_count(users[0].block_table[0]) == 5
    check(bm, *users)
    assert bm.prefix_hit_rate == pytest.approx(5 * 12 / (13 + 5 * 14))


def test_last_prompt_token_is_always_computed():
    bm = BlockManager(16, 4)
    a = seq(list(range(8)), "a")
    bm.allocate(a)
    computed(bm, a)
    assert bm.num_cached_blocks == 2
    same = seq(list(range(8)), "same")  # fully cached, but its last token must produce logits
    bm.allocate(same)
    assert same.num_computed_tokens == 4
    assert same.block_table[0] == a.block_table[0] and same.block_table[1] != a.block_table[1]
    longer = seq(list(range(9)), "longer")
    bm.allocate(longer)
    assert longer.num_computed_tokens == 8
    check(bm, a, same, longer)


def test_one_token_prompt_and_exact_block_prompt():
    bm = BlockManager(8, 4)
    one = seq([5], "one")
    bm.allocate(one)
    assert one.num_computed_tokens == 0 and len(one.block_table) == 1
    four = seq([1, 2, 3, 4], "four")
    bm.allocate(four)
    assert len(four.block_table) == 1


def test_partial_and_uncomputed_blocks_are_not_cached():
    bm = BlockManager(16, 4)
    a = seq(list(range(10)), "a")
    bm.allocate(a)
    computed(bm, a, 6)  # a prompt chunk: one full computed block
    assert bm.num_cached_blocks == 1
    computed(bm, a, 10)  # two full blocks and a partial one
    assert bm.num_cached_blocks == 2
    b = seq(list(range(10)) + [99], "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 8  # the partial third block of a is not reused
    check(bm, a, b)


def test_prefix_must_match_from_the_start():
    bm = BlockManager(16, 4)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    bm.allocate(a)
    computed(bm, a)
    # Same second block, different first block: the chained hash differs, so no hit.
    b = seq([0, 2, 3, 4, 5, 6, 7, 8, 9], "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 0
    assert block_hash(b"", [1, 2]) == block_hash(b"", [1, 2])
    assert block_hash(block_hash(b"", [1]), [2]) != block_hash(block_hash(b"", [0]), [2])
    assert block_hash(b"", [1, 2]) != block_hash(b"", [2, 1])


def test_generated_tokens_are_cached_too():
    bm = BlockManager(16, 4)
    a = seq([1, 2, 3], "a")
    bm.allocate(a)
    computed(bm, a)
    for t in (4, 5, 6):  # decode: the sampled token is computed at the next step
        a.append_token(t)
        bm.append_slots(a, 1)
        computed(bm, a)
    assert bm.num_cached_blocks == 1
    # The next turn of a conversation starts with the previous answer.
    b = seq([1, 2, 3, 4, 5, 6, 7], "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 4 and b.block_table[0] == a.block_table[0]
    check(bm, a, b)


def test_twins_computed_together_keep_one_cached_copy():
    bm = BlockManager(8, 4)
    a, b = seq(list(range(9)), "a"), seq(list(range(9)), "b")
    bm.allocate(a)
    bm.allocate(b)  # nothing computed yet: no sharing
    assert not set(a.block_table) & set(b.block_table)
    computed(bm, a)
    computed(bm, b)
    assert bm.num_cached_blocks == 2
    a_blocks = list(a.block_table)
    bm.free(a)
    bm.free(b)
    check(bm)
    assert len(bm._free_cached) == 2 and len(bm._free_plain) == 6
    c = seq(list(range(9)), "c")
    bm.allocate(c)
    assert c.block_table[:2] == a_blocks[:2]


def test_free_cached_hits_count_against_free_blocks():
    bm = BlockManager(3, 2)
    a = seq([1, 2, 3, 4], "a")
    bm.allocate(a)
    computed(bm, a)
    a_blocks = list(a.block_table)
    bm.free(a)  # both blocks cached and free
    x = seq([9], "x")
    bm.allocate(x)  # takes the one plain block
    b = seq([1, 2, 3, 4, 5], "b")  # 2 hits from the free pool + 1 fresh: only 2 are free
    assert not bm.can_allocate(b)
    bm.free(x)
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert b.block_table[:2] == a_blocks and b.num_computed_tokens == 4
    check(bm, b)


def test_lru_eviction_of_free_cached_blocks():
    bm = BlockManager(4, 2)
    a = seq([1, 2, 3, 4, 5], "a")  # blocks [1,2] [3,4] [5]
    bm.allocate(a)
    computed(bm, a)
    a_blocks = list(a.block_table)
    bm.free(a)
    assert bm.num_cached_blocks == 2
    # Fresh blocks come from never-cached free blocks first.
    b = seq([7, 8, 9], "b")
    bm.allocate(b)
    assert bm.num_cached_blocks == 2 and not set(b.block_table) & set(a_blocks[:2])
    # Then the least recently freed cached block goes: a's tail, freed before its head.
    c = seq([6], "c")
    bm.allocate(c)
    assert c.block_table == [a_blocks[1]] and bm.num_cached_blocks == 1
    check(bm, b, c)
    bm.free(b)
    bm.free(c)
    d = seq([1, 2, 3, 4, 5], "d")
    bm.allocate(d)
    assert d.block_table[0] == a_blocks[0] and d.num_computed_tokens == 2


def test_lru_order_follows_free_time_and_hits_refresh_it():
    bm = BlockManager(4, 2)
    old, new = seq([1, 2, 0], "old"), seq([3, 4, 0], "new")
    for s in (old, new):
        bm.allocate(s)
        computed(bm, s)
    bm.free(old)
    bm.free(new)  # LRU order of the cached free blocks: old's head, new's head
    # A hit on old's head block, freed again, moves it to the recent end.
    again = seq([1, 2, 5], "again")
    bm.allocate(again)
    assert again.num_computed_tokens == 2
    bm.free(again)
    take = seq([8, 8, 8, 8, 8], "take")  # 3 fresh blocks: both plain ones, then one eviction
    bm.allocate(take)
    assert bm.num_cached_blocks == 1
    check(bm, take)
    bm.free(take)
    hit, miss = seq([1, 2, 7], "hit"), seq([3, 4, 7], "miss")
    bm.allocate(hit)
    bm.allocate(miss)
    assert hit.num_computed_tokens == 2 and miss.num_computed_tokens == 0
    check(bm, hit, miss)


def test_preempted_sequence_recovers_its_blocks_from_the_cache():
    bm = BlockManager(8, 4)
    a = seq(list(range(6)), "a")
    bm.allocate(a)
    computed(bm, a)
    for t in (6, 7, 8):
        a.append_token(t)
        bm.append_slots(a, 1)
        computed(bm, a)
    hashes = list(a.block_hashes)
    bm.free(a)  # preempted: recomputed later from its tokens
    assert a.block_hashes == hashes  # memoised content hashes survive
    bm.allocate(a)
    assert a.num_computed_tokens == 8 and len(a.block_table) == 3
    check(bm, a)


def test_prefix_caching_off():
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    a = seq(list(range(9)), "a")
    bm.allocate(a)
    computed(bm, a)
    b = seq(list(range(9)), "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 0 and bm.num_cached_blocks == 0
    assert bm.prefix_hit_rate == 0.0
    bm.free(a)
    bm.free(b)
    check(bm)


def test_reset_prefix_cache():
    bm = BlockManager(8, 4)
    a = seq(list(range(9)), "a")
    bm.allocate(a)
    computed(bm, a)
    held = seq(list(range(9)), "held")
    bm.allocate(held)  # holds the two cached blocks: they survive the reset
    bm.free(a)
    bm.reset_prefix_cache()
    assert bm.num_cached_blocks == 2
    bm.free(held)
    bm.reset_prefix_cache()
    assert bm.num_cached_blocks == 0
    check(bm)
    b = seq(list(range(9)), "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 0
