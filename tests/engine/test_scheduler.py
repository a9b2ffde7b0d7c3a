"""Scheduler: admission, chunked prefill, decode-first batches, preemption, prefix reuse, errors.

A fake model stands in for the runner and its paged KV pool: the "K/V" stored at a position is a
digest of the token prefix ending there, and the next token is a function of the whole prefix. So a
sequence's output must be the same whether it ran alone, batched, from the prefix cache or recomputed
after preemption, and any read of a slot that another sequence overwrote is caught.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from llama3.engine.config import EngineConfig, num_blocks_for_memory
from llama3.engine.scheduler import Scheduler, SchedulerOutput
from llama3.engine.sequence import Sequence, SequenceStatus
from llama3.errors import ConfigError, ContextLengthExceeded, InvalidRequestError

STOP = 0


def digest(prev: int, token: int) -> int:
    return hash((prev, token))


def next_token(d: int, vocab: int) -> int:
    return d % vocab


class FakeModel:
    """Runs a SchedulerOutput against a simulated KV pool and samples by the prefix digest."""

    def __init__(self, sched: Scheduler, vocab: int = 50) -> None:
        self.sched, self.vocab = sched, vocab
        bm = sched.block_manager
        self.kv: list[int | None] = [None] * (bm.num_blocks * bm.block_size)
        self._digests: dict[int, list[int]] = {}

    def digests(self, seq: Sequence) -> list[int]:
        d = self._digests.setdefault(id(seq), [])
        for t in seq.token_ids[len(d) :]:
            d.append(digest(d[-1] if d else 0, t))
        return d

    def step(
        self, between: Callable[[], None] | None = None
    ) -> tuple[SchedulerOutput, list[Sequence]]:
        sched, bm = self.sched, self.sched.block_manager
        out = sched.schedule()
        written: set[int] = set()
        for s in out.scheduled:  # the whole batch writes its K/V first...
            seq, d = s.seq, self.digests(s.seq)
            for p in range(s.start, s.start + s.num_new_tokens):
                block = seq.block_table[p // bm.block_size]
                assert bm.ref_count(block) == 1, "a write into a shared block"
                assert bm._hash[block] is None, "a write into a cached (final) block"
                slot = bm.slot(seq, p)
                assert slot not in written, "two writes to one slot in a step"
                written.add(slot)
                self.kv[slot] = d[p]
        for s in out.scheduled:  # ...then attends over everything before each new position
            seq, d = s.seq, self.digests(s.seq)
            for p in range(s.start + s.num_new_tokens):
                assert self.kv[bm.slot(seq, p)] == d[p], f"{seq!r} reads a wrong K/V at {p}"
        new = {
            s.seq.seq_id: next_token(self.digests(s.seq)[-1], self.vocab)
            for s in out.scheduled
            if s.sample
        }
        stopped = {s.seq.seq_id for s in out.scheduled if s.seq.sampling == "stop"}
        stopped = {i for i in stopped if new.get(i) == STOP}
        if between is not None:
            between()
        return out, sched.postprocess(out, new, stopped)


def alone(prompt: list[int], max_tokens: int | None, max_model_len: int, stop: bool, vocab: int):
    """What one sequence generates with nothing else around: (tokens, status)."""
    tokens, d = list(prompt), 0
    for t in prompt:
        d = digest(d, t)
    while True:
        t = next_token(d, vocab)
        tokens.append(t)
        d = digest(d, t)
        if stop and t == STOP:
            return tokens, SequenceStatus.FINISHED_STOPPED
        n_gen = len(tokens) - len(prompt)
        if (max_tokens is not None and n_gen >= max_tokens) or len(tokens) >= max_model_len:
            return tokens, SequenceStatus.FINISHED_LENGTH


def plan(out: SchedulerOutput) -> list[tuple[str, int]]:
    return [(s.seq.seq_id, s.num_new_tokens) for s in out.scheduled]


def make(**kw) -> tuple[Scheduler, FakeModel]:
    sched = Scheduler(EngineConfig(**kw))
    return sched, FakeModel(sched)


def check_invariants(sched: Scheduler) -> None:
    bm, cfg = sched.block_manager, sched.config
    counts = [0] * bm.num_blocks
    for seq in sched.running:
        assert seq.status is SequenceStatus.RUNNING
        assert len(set(seq.block_table)) == len(seq.block_table)
        assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens
        for b in seq.block_table:
            counts[b] += 1
    for seq in sched.waiting:
        assert seq.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED)
        assert seq.block_table == [] and seq.num_computed_tokens == 0
    plain = set(bm._free_plain)
    assert len(plain) == len(bm._free_plain) and not plain & bm._free_cached.keys()
    for b in range(bm.num_blocks):
        assert bm.ref_count(b) == counts[b], f"block {b}: ref count != tables holding it"
        free = b in bm._free_cached or b in plain
        assert free == (counts[b] == 0), f"block {b} is neither free nor referenced"
    assert bm.num_free_blocks == counts.count(0)
    for h, b in bm._hash_to_block.items():
        assert bm._hash[b] == h
    assert len(sched.running) <= cfg.max_num_seqs
    arrivals = [s.arrival for s in sched.running] + [s.arrival for s in sched.waiting]
    assert arrivals == sorted(arrivals), "running before waiting, each in arrival order"
    live = {s.seq_id for s in sched.running} | {s.seq_id for s in sched.waiting}
    assert live == set(sched._seqs)


# ---- config ---------------------------------------------------------------------------------


def test_config_defaults():
    cfg = EngineConfig()
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.block_size) == (16, 512, 16)
    assert cfg.max_model_len == cfg.model_len == cfg.num_blocks * cfg.block_size
    assert EngineConfig(num_blocks=4, block_size=4, max_model_len=17).max_model_len == 17


@pytest.mark.parametrize(
    "kw, message, param",
    [
        ({"max_num_seqs": 0}, "max_num_seqs must be a positive integer, got 0", "max_num_seqs"),
        ({"block_size": True}, "block_size must be a positive integer, got True", "block_size"),
        ({"num_blocks": 2.5}, "num_blocks must be a positive integer, got 2.5", "num_blocks"),
        (
            {"max_num_seqs": 8, "max_num_batched_tokens": 4},
            "max_num_batched_tokens (4) is smaller than max_num_seqs (8)",
            "max_num_batched_tokens",
        ),
        ({"max_model_len": 1}, "max_model_len must be an integer of at least 2", "max_model_len"),
    ],
)
def test_config_rejects_bad_values(kw, message, param):
    with pytest.raises(InvalidRequestError) as e:
        EngineConfig(**kw)
    assert message in e.value.message and e.value.param == param and e.value.hint


def test_config_rejects_a_model_len_the_cache_cannot_hold():
    with pytest.raises(ConfigError) as e:
        EngineConfig(num_blocks=4, block_size=4, max_model_len=18)
    assert e.value.message == (
        "max_model_len 18 does not fit in the KV cache (4 blocks of 4 tokens = 16 tokens)"
    )
    assert "lower max_model_len" in e.value.hint


def test_num_blocks_for_memory():
    assert num_blocks_for_memory(1 << 20, 1024, 16) == 64
    with pytest.raises(ConfigError, match="holds no block .one block of 16 tokens needs 16384"):
        num_blocks_for_memory(1000, 1024, 16)
    with pytest.raises(ValueError, match="must be positive"):
        num_blocks_for_memory(1000, 0, 16)


def test_scheduler_rejects_a_mismatched_block_manager():
    from llama3.engine.block_manager import BlockManager

    with pytest.raises(ConfigError, match="does not match the engine config"):
        Scheduler(EngineConfig(num_blocks=8, block_size=4), BlockManager(8, 2))


# ---- rejected requests -------------------------------------------------------------------------


def test_add_rejects_bad_requests_with_messages():
    sched, _ = make(num_blocks=4, block_size=4, max_model_len=8)
    sched.add(Sequence("a", [1, 2]))
    with pytest.raises(InvalidRequestError, match="request id 'a' is already in use") as e:
        sched.add(Sequence("a", [3]))
    assert e.value.param == "id"
    with pytest.raises(InvalidRequestError, match="the prompt is empty") as e:
        sched.add(Sequence("empty", []))
    assert e.value.param == "prompt"
    with pytest.raises(ContextLengthExceeded) as e:
        sched.add(Sequence("long", list(range(8))))
    assert e.value.message == "the prompt has 8 tokens but the context window is 8 tokens"
    assert (e.value.prompt_tokens, e.value.limit, e.value.http_status) == (8, 8, 400)
    with pytest.raises(InvalidRequestError, match="max_tokens must be a positive integer, got 0"):
        sched.add(Sequence("zero", [1], max_tokens=0))
    assert [s.seq_id for s in sched.waiting] == ["a"]


def test_add_rejects_a_sequence_that_already_ran():
    sched, model = make(num_blocks=8, block_size=4)
    seq = Sequence("a", [1, 2], max_tokens=1)
    sched.add(seq)
    model.step()
    assert seq.is_finished
    with pytest.raises(InvalidRequestError, match="was already scheduled once"):
        sched.add(seq)


def test_a_request_as_long_as_the_cache_runs_alone():
    # max_model_len - 1 positions fill every block; it must run, not wait forever.
    sched, model = make(num_blocks=4, block_size=4, max_model_len=17, max_num_batched_tokens=64)
    seq = Sequence("big", list(range(1, 16)))
    sched.add(seq)
    while sched.has_unfinished:
        model.step()
        check_invariants(sched)
    assert seq.num_tokens == 17 and seq.finish_reason == "length"


# ---- one request ------------------------------------------------------------------------------


def test_single_request_lifecycle():
    sched, model = make(num_blocks=8, block_size=4)
    seq = Sequence("a", [5, 6, 7, 8, 9], max_tokens=3)
    sched.add(seq)
    assert (sched.num_waiting, sched.num_running) == (1, 0)
    out, fin = model.step()
    assert plan(out) == [("a", 5)] and out.scheduled[0].sample and out.scheduled[0].start == 0
    assert (sched.num_waiting, sched.num_running) == (0, 1)
    assert seq.num_computed_tokens == 5 and seq.num_generated == 1 and not fin
    out, fin = model.step()
    assert plan(out) == [("a", 1)] and out.scheduled[0].start == 5
    out, fin = model.step()
    assert fin == [seq] and seq.status is SequenceStatus.FINISHED_LENGTH
    assert seq.finish_reason == "length" and seq.num_generated == 3
    assert seq.token_ids == alone([5, 6, 7, 8, 9], 3, 10**9, False, 50)[0]
    assert not sched.has_unfinished and sched.block_manager.usage == 0.0
    assert sched.schedule().is_empty


def test_finishes_at_max_model_len():
    sched, model = make(num_blocks=4, block_size=4, max_model_len=8)
    seq = Sequence("a", [1, 2, 3, 4, 5])
    sched.add(seq)
    steps = 0
    while sched.has_unfinished:
        model.step()
        steps += 1
    assert steps == 3 and seq.num_tokens == 8 and seq.finish_reason == "length"


def test_stop_decided_by_the_engine_wins_over_length():
    sched, model = make(num_blocks=8, block_size=4)
    seq = Sequence("a", [1, 2], max_tokens=1)
    sched.add(seq)
    out = sched.schedule()
    fin = sched.postprocess(out, {"a": 9}, stopped={"a"})
    assert fin == [seq] and seq.status is SequenceStatus.FINISHED_STOPPED
    assert seq.finish_reason == "stop" and seq.generated_token_ids == [9]


def test_engine_finish_and_unknown_ids():
    sched, model = make(num_blocks=8, block_size=4)
    seq = Sequence("a", [1, 2, 3])
    sched.add(seq)
    model.step()
    assert sched.finish("a", SequenceStatus.FINISHED_STOPPED)
    assert seq.finish_reason == "stop" and sched.block_manager.usage == 0.0
    assert not sched.finish("a", SequenceStatus.FINISHED_LENGTH)
    assert not sched.abort("nobody")
    with pytest.raises(ValueError, match="is not a finished status"):
        sched.finish("a", SequenceStatus.RUNNING)


def test_postprocess_needs_a_token_for_every_sampling_sequence():
    sched, _ = make(num_blocks=8, block_size=4)
    sched.add(Sequence("a", [1, 2, 3]))
    out = sched.schedule()
    with pytest.raises(ValueError, match="no sampled token for Sequence.'a'"):
        sched.postprocess(out, {})


# ---- chunked prefill and decode-first batches -------------------------------------------------


def test_chunked_prefill_splits_a_long_prompt():
    sched, model = make(num_blocks=16, block_size=4, max_num_seqs=2, max_num_batched_tokens=8)
    seq = Sequence("a", list(range(1, 21)), max_tokens=2)
    sched.add(seq)
    chunks = []
    while sched.has_unfinished:
        out, _ = model.step()
        chunks += [(s.start, s.num_new_tokens, s.sample) for s in out.scheduled]
    assert chunks == [(0, 8, False), (8, 8, False), (16, 4, True), (20, 1, True)]
    assert seq.token_ids == alone(list(range(1, 21)), 2, 10**9, False, 50)[0]


def test_running_streams_get_a_token_every_step_while_a_long_prompt_prefills():
    sched, model = make(num_blocks=32, block_size=4, max_num_seqs=4, max_num_batched_tokens=8)
    a = Sequence("a", [1, 2, 3])
    sched.add(a)
    model.step()
    sched.add(Sequence("long", list(range(100, 129))))
    plans = [plan(model.step()[0]) for _ in range(5)]
    assert plans == [
        [("a", 1), ("long", 7)],
        [("a", 1), ("long", 7)],
        [("a", 1), ("long", 7)],
        [("a", 1), ("long", 7)],
        [("a", 1), ("long", 1)],  # the last prompt token: logits and the first sampled token
    ]
    assert plan(model.step()[0]) == [("a", 1), ("long", 1)]  # both decode now


def test_running_prefills_before_new_admissions_and_admission_uses_leftover_budget():
    sched, model = make(num_blocks=32, block_size=4, max_num_seqs=4, max_num_batched_tokens=10)
    for i, n in enumerate((14, 3, 5)):
        sched.add(Sequence(f"s{i}", list(range(10 * i, 10 * i + n))))
    assert plan(model.step()[0]) == [("s0", 10)]
    assert plan(model.step()[0]) == [("s0", 4), ("s1", 3), ("s2", 3)]
    assert plan(model.step()[0]) == [("s0", 1), ("s1", 1), ("s2", 2)]
    assert plan(model.step()[0]) == [("s0", 1), ("s1", 1), ("s2", 1)]


def test_max_num_seqs_bounds_the_running_batch():
    sched, model = make(num_blocks=32, block_size=4, max_num_seqs=2, max_num_batched_tokens=64)
    seqs = [Sequence(f"s{i}", [i + 1, i + 2], max_tokens=2 + i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    out, _ = model.step()
    assert plan(out) == [("s0", 2), ("s1", 2)] and sched.num_waiting == 1
    out, fin = model.step()
    assert fin == [seqs[0]] and sched.num_running == 1
    out, _ = model.step()  # s2 joins the batch as soon as s0 leaves it
    assert plan(out) == [("s1", 1), ("s2", 2)]


# ---- preemption ------------------------------------------------------------------------------


def preemption_setup(enable_prefix_caching: bool = True):
    # 3 running sequences of 3 tokens in 2-token blocks: 6 of 8 blocks held after 2 decodes.
    sched, model = make(
        num_blocks=8,
        block_size=2,
        max_num_seqs=4,
        max_num_batched_tokens=16,
        enable_prefix_caching=enable_prefix_caching,
    )
    seqs = [Sequence(n, [10 * i + 1, 10 * i + 2, 10 * i + 3]) for i, n in enumerate("abc")]
    for s in seqs:
        sched.add(s)
    return sched, model, seqs


def test_admission_keeps_a_block_of_headroom_per_running_sequence():
    sched, model, (a, b, c) = preemption_setup()
    out, _ = model.step()
    # c needs 2 blocks; after it the 8-block pool would have 2 left for a and b (reserve 2): ok.
    assert plan(out) == [("a", 3), ("b", 3), ("c", 3)]
    d = Sequence("d", [7, 7, 7])
    sched.add(d)
    out, _ = model.step()
    assert ("d", 3) not in plan(out) and sched.num_waiting == 1  # 2 free, reserve 3


@pytest.mark.parametrize("caching", [False, True])
def test_preemption_takes_the_newest_and_it_resumes_with_all_its_tokens(caching):
    sched, model, (a, b, c) = preemption_setup(caching)
    preempted = []
    for _ in range(3):
        out, _ = model.step()
        check_invariants(sched)
        preempted += out.preempted
    # step 3 decodes position 4: each sequence needs a third block, 2 are free -> c goes.
    assert preempted == [c] and c.status is SequenceStatus.PREEMPTED
    assert c.num_preemptions == 1 and c.block_table == [] and c.num_computed_tokens == 0
    assert c.num_generated == 2  # its generated tokens are kept
    assert [s.seq_id for s in sched.waiting] == ["c"]
    # A newer request queues behind the preempted one.
    sched.add(Sequence("e", [40, 41], max_tokens=1))
    a.max_tokens = b.max_tokens = a.num_generated + 1  # let a and b finish now
    out, fin = model.step()
    assert fin == [a, b] and not out.preempted
    out, _ = model.step()
    # Recomputed from its 5 tokens; with prefix caching its 2 full computed blocks survived.
    start = 4 if caching else 0
    assert plan(out)[0] == ("c", 5 - start) and out.scheduled[0].start == start
    assert [i for i, _ in plan(out)] == ["c", "e"]  # the preempted one is admitted first
    c.max_tokens = c.num_generated + 2
    while sched.has_unfinished:
        model.step()
        check_invariants(sched)
    assert c.token_ids == alone(c.prompt_token_ids, c.max_tokens, 10**9, False, 50)[0]


def test_a_decode_that_needs_a_block_preempts_the_newest_other_sequence():
    sched, model = make(num_blocks=4, block_size=2, max_num_seqs=2, max_num_batched_tokens=8)
    a, b = Sequence("a", [1, 2, 3]), Sequence("b", [4, 5])
    sched.add(a)
    sched.add(b)
    model.step()  # a: 2 blocks, b: 1 block
    out, _ = model.step()  # a decodes position 3 (block 1); b position 2 takes the last block
    assert plan(out) == [("a", 1), ("b", 1)] and not out.preempted
    out, _ = model.step()  # a needs block 2: none free, b (the newest) goes
    assert plan(out) == [("a", 1)] and out.preempted == [b]
    assert b.status is SequenceStatus.PREEMPTED and b.num_generated == 2
    check_invariants(sched)


def test_a_decode_preempts_itself_when_it_is_the_newest():
    sched, model = make(num_blocks=4, block_size=2, max_num_seqs=2, max_num_batched_tokens=8)
    a, b = Sequence("a", [1, 2], max_tokens=3), Sequence("b", [3, 4, 5], max_tokens=3)
    sched.add(a)
    sched.add(b)
    model.step()  # a: 1 block, b: 2 blocks
    out, _ = model.step()  # a: position 2 takes the last free block; b: position 3 fits
    assert not out.preempted
    out, _ = model.step()  # a: position 3 fits; b: position 4 needs a block, and b is newest
    assert plan(out) == [("a", 1)] and out.preempted == [b]
    check_invariants(sched)
    while sched.has_unfinished:
        model.step()
        check_invariants(sched)
    for s in (a, b):
        assert s.token_ids == alone(s.prompt_token_ids, 3, 10**9, False, 50)[0]


def test_no_admission_in_a_step_that_preempted():
    sched, model, (a, b, c) = preemption_setup()
    model.step()
    model.step()
    sched.add(Sequence("tiny", [99]))
    out, _ = model.step()
    assert out.preempted == [c] and "tiny" not in [i for i, _ in plan(out)]


# ---- prefix caching through the scheduler -----------------------------------------------------


def test_requests_sharing_a_system_prompt_reuse_its_blocks():
    sched, model = make(num_blocks=64, block_size=4, max_num_batched_tokens=64)
    system = list(range(100, 132))  # 8 blocks
    first = Sequence("first", system + [1, 2], max_tokens=2)
    sched.add(first)
    while sched.has_unfinished:
        model.step()
    assert first.num_cached_tokens == 0
    users = [Sequence(f"u{i}", system + [i, i + 1, i + 2], max_tokens=3) for i in range(3)]
    for u in users:
        sched.add(u)
    out, _ = model.step()
    assert [(s.start, s.num_new_tokens) for s in out.scheduled] == [(32, 3)] * 3
    assert [u.num_cached_tokens for u in users] == [32, 32, 32]
    assert sched.block_manager.ref_count(users[0].block_table[0]) == 3
    assert sched.prefix_hit_rate == pytest.approx(3 * 32 / (34 + 3 * 35))
    while sched.has_unfinished:
        model.step()
        check_invariants(sched)
    for u in users:
        assert u.token_ids == alone(u.prompt_token_ids, 3, 10**9, False, 50)[0]


def test_a_sequence_prefilling_beside_its_twin_shares_nothing_until_computed():
    sched, model = make(num_blocks=32, block_size=4, max_num_batched_tokens=64)
    a, b = Sequence("a", list(range(9))), Sequence("b", list(range(9)))
    sched.add(a)
    sched.add(b)
    out, _ = model.step()
    assert [s.start for s in out.scheduled] == [0, 0]
    assert not set(a.block_table) & set(b.block_table)
    c = Sequence("c", list(range(9)))
    sched.add(c)
    out, _ = model.step()
    assert out.scheduled[-1].seq is c and out.scheduled[-1].start == 8


# ---- abort ------------------------------------------------------------------------------------


def test_abort_frees_blocks_at_once_in_every_state():
    sched, model = make(num_blocks=8, block_size=4, max_num_seqs=1, max_num_batched_tokens=8)
    run, wait = Sequence("run", list(range(10))), Sequence("wait", [1, 2])
    sched.add(run)
    sched.add(wait)
    model.step()
    assert sched.block_manager.usage > 0
    assert sched.abort("run")
    assert run.status is SequenceStatus.FINISHED_ABORTED and run.finish_reason == "abort"
    assert run.block_table == [] and sched.block_manager.usage == 0.0
    check_invariants(sched)
    assert sched.abort("wait") and sched.num_waiting == 0 and not sched.has_unfinished
    assert not sched.abort("wait")


def test_abort_between_schedule_and_postprocess():
    sched, model = make(num_blocks=8, block_size=4)
    sched.add(Sequence("a", [1, 2, 3]))
    sched.add(b := Sequence("b", [4, 5, 6]))
    out, fin = model.step(between=lambda: sched.abort("a"))
    assert fin == [] and sched.num_running == 1 and b.num_generated == 1
    check_invariants(sched)


def test_abort_a_preempted_sequence():
    sched, model, (a, b, c) = preemption_setup()
    for _ in range(3):
        model.step()
    assert c.status is SequenceStatus.PREEMPTED
    assert sched.abort("c") and c.status is SequenceStatus.FINISHED_ABORTED
    check_invariants(sched)


# ---- Sequence helpers ---------------------------------------------------------------------------


def test_sequence_helpers():
    s = Sequence(7, [1, 2, 3], max_tokens=4, sampling={"temperature": 0})
    assert (s.num_tokens, s.num_generated, s.num_uncomputed_tokens) == (3, 0, 3)
    s.append_token(9)
    assert s.prompt_token_ids == [1, 2, 3] and s.generated_token_ids == [9]
    assert s.num_generated == 1 and s.finish_reason is None and not s.is_finished
    assert repr(s) == "Sequence(7, WAITING, tokens=4, computed=0, blocks=0)"
    assert SequenceStatus.FINISHED_LENGTH.is_finished and not SequenceStatus.PREEMPTED.is_finished


# ---- property test: thousands of random steps -------------------------------------------------

CONFIGS = [
    dict(block_size=4, num_blocks=20, max_num_seqs=4, max_num_batched_tokens=12, max_model_len=48),
    dict(block_size=1, num_blocks=40, max_num_seqs=6, max_num_batched_tokens=8, max_model_len=40),
    dict(
        block_size=16,
        num_blocks=6,
        max_num_seqs=3,
        max_num_batched_tokens=20,
        max_model_len=96,
        enable_prefix_caching=False,
    ),
    dict(block_size=2, num_blocks=16, max_num_seqs=8, max_num_batched_tokens=8, max_model_len=32),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"bs{c['block_size']}")
def test_random_operations_keep_every_invariant(cfg, seed):
    rng = random.Random(seed)
    vocab = 3  # a tiny vocabulary makes prompts and answers collide: many prefix hits
    sched = Scheduler(EngineConfig(**cfg))
    model = FakeModel(sched, vocab=vocab)
    bs, max_len = cfg["block_size"], cfg["max_model_len"]
    systems = [[rng.randrange(vocab) for _ in range(rng.randrange(3 * bs))] for _ in range(3)]
    requests: dict[str, Sequence] = {}
    aborted: set[str] = set()
    stats = {"preempted": 0, "chunks": 0, "rejected": 0}

    def abort_one() -> None:
        live = sorted(sched._seqs)
        if live:
            sid = rng.choice(live)
            assert sched.abort(sid)
            aborted.add(sid)
            assert requests[sid].block_table == [] and requests[sid].is_finished
            check_invariants(sched)

    def one_step() -> None:
        decoding = [s for s in sched.running if s.num_uncomputed_tokens == 1]
        between = abort_one if rng.random() < 0.03 else None
        out, finished = model.step(between)
        # budgets
        assert 0 < out.num_batched_tokens <= cfg["max_num_batched_tokens"] or out.is_empty
        assert len(out.scheduled) <= cfg["max_num_seqs"]
        assert len({id(s.seq) for s in out.scheduled}) == len(out.scheduled)
        assert all(s.num_new_tokens >= 1 for s in out.scheduled)
        # decode first: every decoding sequence got its token (or was preempted), ahead of prefill
        k = len(decoding) - len([s for s in decoding if s in out.preempted])
        head = out.scheduled[:k]
        assert {id(s.seq) for s in head} == {id(s) for s in decoding if s not in out.preempted}
        assert all(s.num_new_tokens == 1 and s.sample for s in head)
        assert [s.seq.arrival for s in head] == sorted(s.seq.arrival for s in head)
        # newest first: each victim is newer than every sequence still running
        for v in out.preempted:
            assert v.status is SequenceStatus.PREEMPTED or v.seq_id in aborted
            assert all(r.arrival < v.arrival for r in sched.running)
        stats["preempted"] += len(out.preempted)
        stats["chunks"] += sum(not s.sample for s in out.scheduled)
        for f in finished:
            assert f.is_finished and f.block_table == []
        check_invariants(sched)

    n = 0
    for _ in range(1200):
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
            tail = rng.randint(1, 24) if rng.random() > 0.02 else max_len
            prompt = rng.choice(systems) + [rng.randrange(vocab) for _ in range(tail)]
            seq = Sequence(
                f"r{n}",
                prompt,
                max_tokens=rng.choice((None, 1, 2, 5, 16)),
                sampling="stop" if rng.random() < 0.3 else None,
            )
            n += 1
            if len(prompt) >= max_len:
                with pytest.raises(ContextLengthExceeded):
                    sched.add(seq)
                stats["rejected"] += 1
                continue
            sched.add(seq)
            requests[seq.seq_id] = seq
        if rng.random() < 0.03:
            abort_one()
        one_step()

    # every request eventually finishes
    for _ in range(20000):
        if not sched.has_unfinished:
            break
        one_step()
    assert not sched.has_unfinished
    assert sched.block_manager.usage == 0.0 and sched.num_running == sched.num_waiting == 0
    assert stats["preempted"] > 0 and stats["chunks"] > 0 and stats["rejected"] > 0
    if cfg.get("enable_prefix_caching", True):
        assert sched.prefix_hit_rate > 0
    # and each one generated exactly what it would have generated alone
    for sid, seq in requests.items():
        if sid in aborted:
            assert seq.status is SequenceStatus.FINISHED_ABORTED
            continue
        expect = alone(seq.prompt_token_ids, seq.max_tokens, max_len, seq.sampling == "stop", vocab)
        assert (seq.token_ids, seq.status) == expect, sid
