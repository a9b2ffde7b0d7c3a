"""Tests for llama3.generation.sampling.

Oracles: plain-Python reimplementations written here from the rules' definitions (Meta's top-p,
OpenAI penalties, CTRL repetition penalty), and HF transformers' logits processors, which implement
the same rules independently.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llama3.errors import InvalidRequestError
from llama3.generation.sampling import (
    apply_frequency_presence_penalties,
    apply_logit_bias,
    apply_repetition_penalty,
    apply_temperature,
    greedy,
    logprobs_of,
    min_p_filter,
    sample,
    sample_next,
    top_k_filter,
    top_logprobs,
    top_p_filter,
)

NEG_INF = float("-inf")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_logits(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=_gen(seed)) * 3


def _meta_top_p_keep(row: list[float], p: float) -> set[int]:
    """Meta's sample_top_p kept set, straight from its definition, in float64 Python."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))
    kept, before = set(), 0.0
    for i in order:
        if before > p:
            break
        kept.add(i)
        before += row[i]
    return kept


# ---- repetition penalty ------------------------------------------------------------------------


def test_repetition_penalty_hand_computed() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.0], [1.0, 1.0, -2.0, 4.0, -0.5]])
    before = logits.clone()
    prev = [[0, 1, 1, 4], [3]]
    out = apply_repetition_penalty(logits, prev, torch.tensor([2.0, 1.5]))
    expected = [[1.0, -2.0, 0.5, -3.0, 0.0], [1.0, 1.0, -2.0, 4.0 / 1.5, -0.5]]
    torch.testing.assert_close(out, torch.tensor(expected))
    assert torch.equal(logits, before)


def test_repetition_penalty_matches_transformers() -> None:
    logits = _random_logits(3, 50, seed=1)
    ids = torch.randint(0, 50, (3, 12), generator=_gen(2))
    ours = apply_repetition_penalty(logits, ids.tolist(), 1.3)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)


def test_repetition_penalty_one_is_noop_and_validates() -> None:
    logits = _random_logits(2, 10)
    assert torch.equal(apply_repetition_penalty(logits, [[1, 2], [3]], 1.0), logits)
    with pytest.raises(InvalidRequestError) as err:
        apply_repetition_penalty(logits, [[1], [2]], 0.0)
    assert err.value.param == "repetition_penalty" and err.value.hint
    with pytest.raises(InvalidRequestError):
        apply_repetition_penalty(logits, [[1], [10]], 1.2)  # id outside the vocabulary


# ---- frequency / presence ----------------------------------------------------------------------


def test_frequency_presence_hand_computed() -> None:
    logits = _random_logits(3, 20, seed=3)
    before = logits.clone()
    gen = [[1, 1, 1, 5, 7, 7], [], [19, 0, 19]]
    freq = torch.tensor([0.5, 1.0, -0.25])
    pres = [0.3, 2.0, 1.0]
    out = apply_frequency_presence_penalties(logits, gen, freq, pres)
    for r in range(3):
        counts = Counter(gen[r])
        for t in range(20):
            c = counts.get(t, 0)
            want = before[r, t].item() - freq[r].item() * c - pres[r] * (1 if c else 0)
            assert math.isclose(out[r, t].item(), want, rel_tol=1e-6, abs_tol=1e-6)
    assert torch.equal(logits, before)


def test_frequency_presence_zero_is_noop() -> None:
    logits = _random_logits(2, 10)
    assert torch.equal(apply_frequency_presence_penalties(logits, [[1], [2, 2]], 0.0, 0.0), logits)
    with pytest.raises(InvalidRequestError):
        apply_frequency_presence_penalties(logits, [[1], [2]], float("nan"), 0.0)


# ---- logit bias --------------------------------------------------------------------------------


def test_logit_bias_hand_computed() -> None:
    logits = _random_logits(3, 8, seed=4)
    before = logits.clone()
    biases = [{0: 5.0, 7: -100.0}, None, {3: 1.5}]
    out = apply_logit_bias(logits, biases)
    want = before.clone()
    for r, b in enumerate(biases):
        for t, v in (b or {}).items():
            want[r, t] += v
    torch.testing.assert_close(out, want)
    assert torch.equal(logits, before)
    with pytest.raises(InvalidRequestError):
        apply_logit_bias(logits, [{8: 1.0}, None, None])
    with pytest.raises(InvalidRequestError):
        apply_logit_bias(logits, [{1: float("inf")}, None, None])


# ---- temperature -------------------------------------------------------------------------------


def test_temperature_matches_transformers_and_per_row() -> None:
    logits = _random_logits(2, 30, seed=5)
    before = logits.clone()
    torch.testing.assert_close(
        apply_temperature(logits, 0.7), TemperatureLogitsWarper(0.7)(None, logits.clone())
    )
    out = apply_temperature(logits, torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out[0], before[0] / 0.5)
    torch.testing.assert_close(out[1], before[1] / 2.0)
    assert torch.equal(logits, before)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidRequestError):
            apply_temperature(logits, bad)


# ---- top-k -------------------------------------------------------------------------------------


def test_top_k_hand_computed_per_row() -> None:
    logits = torch.tensor(
        [[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]]
    )
    before = logits.clone()
    out = top_k_filter(logits, torch.tensor([2, 0, 7]))  # 0 and >= vocab: no-op rows
    for r, k in enumerate([2, 0, 7]):
        row = before[r].tolist()
        keep = set(sorted(range(5), key=lambda i: -row[i])[:k]) if 0 < k < 5 else set(range(5))
        for t in range(5):
            assert out[r, t].item() == (row[t] if t in keep else NEG_INF)
    assert torch.equal(logits, before)


def test_top_k_matches_transformers() -> None:
    logits = _random_logits(4, 100, seed=6)
    for k in (1, 5, 40):
        torch.testing.assert_close(
            top_k_filter(logits, k), TopKLogitsWarper(k)(None, logits.clone())
        )


def test_top_k_keeps_ties_at_kth_value() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    out = top_k_filter(logits, 2)
    assert out[0].tolist() == [NEG_INF, 3.0, 2.0, 2.0, NEG_INF]
    with pytest.raises(InvalidRequestError):
        top_k_filter(logits, 2.5)


# ---- top-p -------------------------------------------------------------------------------------


def test_top_p_matches_meta_rule_in_plain_python() -> None:
    probs = torch.softmax(_random_logits(6, 40, seed=7), dim=-1)
    before = probs.clone()
    rows = probs.tolist()
    # Pick each row's p halfway between two cumulative masses so float rounding cannot matter.
    ps = []
    for r, row in enumerate(rows):
        masses = sorted(row, reverse=True)
        cum = [sum(masses[: j + 1]) for j in range(len(masses))]
        j = [0, 1, 3, 6, 10, 20][r]
        ps.append((cum[j] + cum[j + 1]) / 2)
    out = top_p_filter(probs, torch.tensor(ps))
    for r, row in enumerate(rows):
        keep = _meta_top_p_keep(row, ps[r])
        total = sum(row[i] for i in keep)
        want = [row[i] / total if i in keep else 0.0 for i in range(len(row))]
        torch.testing.assert_close(out[r], torch.tensor(want), rtol=1e-5, atol=1e-7)
    assert torch.equal(probs, before)


def test_top_p_from_the_largest_candidates_is_the_full_sort_bit_for_bit(monkeypatch) -> None:
    """On the CPU the nucleus is found among each row's 256 largest probabilities when they settle
    it (ties included), else by sorting the whole row: both give the same result, bit for bit,
    and the Meta rule holds (checked against plain Python on tied rows)."""
    from llama3.generation import sampling

    gen = torch.Generator().manual_seed(3)
    cases = []
    for trial in range(120):
        logits = torch.randn(3, 3000, generator=gen) * [0.5, 3.0, 8.0][trial % 3]
        if trial % 2:
            logits = (logits * 2).round() / 2  # many exact ties
        cases.append((torch.softmax(logits, -1), torch.rand(3, generator=gen) * 1.1))
    fast = [top_p_filter(probs, p) for probs, p in cases]
    settled = sum(sampling._top_p_among_the_largest(pr, p, p < 1) is not None for pr, p in cases)
    assert 0 < settled < len(cases)  # both paths ran
    monkeypatch.setattr(sampling, "_top_p_among_the_largest", lambda *a: None)
    for got, (probs, p) in zip(fast, cases):
        assert torch.equal(got, top_p_filter(probs, p))
    probs, p = cases[1]  # a tied row against the rule in plain Python
    for r in range(3):
        if p[r] < 1:
            keep = _meta_top_p_keep(probs[r].tolist(), float(p[r]))
            assert set(fast[1][r].nonzero().flatten().tolist()) == set(keep)


def test_top_p_matches_transformers_away_from_boundaries() -> None:
    logits = _random_logits(5, 64, seed=8)
    probs = torch.softmax(logits, dim=-1)
    for p in (0.3, 0.62, 0.9):
        theirs = torch.softmax(TopPLogitsWarper(p)(None, logits.clone()), dim=-1)
        torch.testing.assert_close(top_p_filter(probs, p), theirs, rtol=1e-5, atol=1e-7)


def test_top_p_top_token_always_survives() -> None:
    probs = torch.softmax(_random_logits(4, 50, seed=9), dim=-1)
    for p in (0.0, 1e-9, 1e-4):
        out = top_p_filter(probs, p)
        assert torch.equal(out.argmax(-1), probs.argmax(-1))
        assert torch.all((out > 0).sum(-1) == 1)
        torch.testing.assert_close(out.amax(-1), torch.ones(4))


def test_top_p_one_is_noop_per_row() -> None:
    probs = torch.softmax(_random_logits(2, 50, seed=10), dim=-1)
    assert torch.equal(top_p_filter(probs, 1.0), probs)
    out = top_p_filter(probs, torch.tensor([1.0, 0.5]))
    assert torch.equal(out[0], probs[0])
    assert (out[1] == 0).any()
    with pytest.raises(InvalidRequestError):
        top_p_filter(probs, -0.1)


# ---- min-p -------------------------------------------------------------------------------------


def test_min_p_hand_computed_and_matches_transformers() -> None:
    logits = _random_logits(3, 30, seed=11)
    probs = torch.softmax(logits, dim=-1)
    before = probs.clone()
    out = min_p_filter(probs, 0.1)
    for r, row in enumerate(probs.tolist()):
        keep = [x >= 0.1 * max(row) for x in row]
        total = sum(x for x, k in zip(row, keep) if k)
        want = [x / total if k else 0.0 for x, k in zip(row, keep)]
        torch.testing.assert_close(out[r], torch.tensor(want), rtol=1e-5, atol=1e-7)
    theirs = torch.softmax(MinPLogitsWarper(0.1)(None, logits.clone()), dim=-1)
    torch.testing.assert_close(out, theirs, rtol=1e-5, atol=1e-7)
    assert torch.equal(probs, before)
    assert torch.equal(min_p_filter(probs, 0.0), probs)
    with pytest.raises(InvalidRequestError):
        min_p_filter(probs, 1.5)


# ---- sampling ----------------------------------------------------------------------------------


def test_sample_same_seed_same_tokens_different_seed_different() -> None:
    probs = torch.full((1, 100), 0.01)
    g1, g2, g3 = _gen(123), _gen(123), _gen(124)
    a = [sample(probs, [g1]).item() for _ in range(200)]
    b = [sample(probs, [g2]).item() for _ in range(200)]
    c = [sample(probs, [g3]).item() for _ in range(200)]
    assert a == b
    assert a != c
    # Two streams of 200 uniform draws over 100 ids agree in far fewer than half of the positions.
    assert sum(x == y for x, y in zip(a, c)) < 20


def test_sample_row_independent_of_neighbours() -> None:
    target = torch.softmax(_random_logits(1, 64, seed=12), dim=-1)
    others = torch.softmax(_random_logits(3, 64, seed=13), dim=-1)
    alone = [sample(target, [g]).item() for g in [_gen(7)] for _ in range(50)]
    g_row, g_other = _gen(7), _gen(99)
    with_neighbours = [
        sample(torch.cat([others[:1], target, others[1:]]), [g_other, g_row, None, None])[1].item()
        for _ in range(50)
    ]
    assert alone == with_neighbours


def test_sample_matches_distribution() -> None:
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    torch.manual_seed(0)
    draws = sample(p.expand(40_000, 5).contiguous())
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)


def test_sample_with_top_k_only_returns_top_k_ids() -> None:
    logits = _random_logits(1, 200, seed=14)
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    probs = torch.softmax(top_k_filter(logits, 5), dim=-1).expand(5_000, 200).contiguous()
    torch.manual_seed(1)
    seen = set(sample(probs).tolist())
    assert seen == top5  # every top-5 id shows up in 5000 draws, nothing else does


# ---- greedy, logprobs --------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [49152, 37])
def test_greedy_takes_the_first_of_tied_maxima(vocab) -> None:
    # a few values per row, so every row has ties at its maximum (NaN rows: the first NaN wins,
    # in the vector body or the tail); torch.argmax is the oracle
    logits = torch.randint(0, 4, (64, vocab), generator=_gen(3)).float()
    logits[5, vocab - 2] = logits[5, vocab - 1] = float("nan")
    logits[6, 7] = logits[6, vocab - 1] = float("nan")
    logits[7] = float("-inf")
    assert torch.equal(greedy(logits), torch.argmax(logits, dim=-1))
    assert greedy(logits)[[5, 6, 7]].tolist() == [vocab - 2, 7, 0]


def test_greedy_and_logprobs() -> None:
    logits = _random_logits(3, 25, seed=15)
    before = logits.clone()
    assert greedy(logits).tolist() == [max(range(25), key=lambda i: r[i]) for r in logits.tolist()]
    ids = torch.tensor([0, 24, 7])
    lp = logprobs_of(logits, ids)
    for r, row in enumerate(logits.double().tolist()):
        lse = math.log(sum(math.exp(x) for x in row))
        assert math.isclose(lp[r].item(), row[ids[r]] - lse, abs_tol=1e-5)
    assert lp.dtype == torch.float32
    assert logprobs_of(logits, [[0, 1], [2, 3], [4, 5]]).shape == (3, 2)
    values, top_ids = top_logprobs(logits, 4)
    assert values.dtype == torch.float32 and top_ids.shape == (3, 4)
    for r, row in enumerate(logits.tolist()):
        assert top_ids[r].tolist() == sorted(range(25), key=lambda i: -row[i])[:4]
    torch.testing.assert_close(values, torch.log_softmax(logits, -1).gather(-1, top_ids))
    assert torch.equal(logits, before)


# ---- sample_next -------------------------------------------------------------------------------


def test_sample_next_mixed_greedy_and_sampled_rows() -> None:
    logits = _random_logits(4, 50, seed=16)
    before = logits.clone()
    temps = torch.tensor([0.0, 1.0, 0.0, 0.8])
    argmax = logits.argmax(-1)
    for step in range(20):
        gens = [_gen(1), _gen(100 + step), None, _gen(200 + step)]
        out = sample_next(logits, temperature=temps, top_k=10, top_p=0.95, generators=gens)
        assert out.dtype == torch.int64 and out.shape == (4,)
        assert out[0] == argmax[0] and out[2] == argmax[2]
        for r in (1, 3):
            assert out[r].item() in set(torch.topk(logits[r], 10).indices.tolist())
    assert torch.equal(logits, before)
    assert torch.equal(sample_next(logits, temperature=0.0), argmax)


def test_sample_next_distribution_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    t, k, p = 0.7, 4, 0.8
    # Hand pipeline: temperature, top-k, softmax, Meta top-p (p=0.8 is far from any boundary).
    scaled = [x / t for x in logits[0].tolist()]
    kth = sorted(scaled, reverse=True)[k - 1]
    exps = [math.exp(x) if x >= kth else 0.0 for x in scaled]
    probs = [e / sum(exps) for e in exps]
    keep = _meta_top_p_keep(probs, p)
    total = sum(probs[i] for i in keep)
    want = torch.tensor([probs[i] / total if i in keep else 0.0 for i in range(6)])
    torch.manual_seed(2)
    draws = sample_next(logits.expand(40_000, 6), temperature=t, top_k=k, top_p=p)
    freq = torch.bincount(draws, minlength=6).float() / draws.numel()
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)


def test_sample_next_row_independent_and_tiny_temperature() -> None:
    target = _random_logits(1, 80, seed=17)
    neighbours = _random_logits(2, 80, seed=18)
    a = sample_next(target, temperature=0.9, top_p=0.9, generators=[_gen(5)])
    batch = torch.cat([neighbours[:1], target, neighbours[1:]])
    b = sample_next(
        batch,
        temperature=torch.tensor([0.0, 0.9, 1.3]),
        top_k=torch.tensor([3, 0, 5]),
        top_p=0.9,
        min_p=torch.tensor([0.2, 0.0, 0.0]),
        generators=[_gen(1), _gen(5), _gen(2)],
    )
    assert a.item() == b[1].item()
    # A temperature small enough to overflow logits / t to inf must still give the argmax, not NaN.
    big = torch.tensor([[40.0, 50.0, 45.0, -60.0]])
    assert sample_next(big, temperature=1e-37, generators=[_gen(0)]).item() == 1
    with pytest.raises(InvalidRequestError):
        sample_next(target, temperature=-0.5)


def test_seeded_draws_follow_the_distribution_and_skip_zeros() -> None:
    """One row's draws from its own generator: the frequencies are the probabilities (zeros never
    drawn, also beside rounding: the row sums to a little less than 1)."""
    p = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.15, 0.04999, 0.0]])
    g = _gen(5)
    draws = torch.tensor([int(sample(p, [g])[0]) for _ in range(20_000)])
    freq = torch.bincount(draws, minlength=7).float() / draws.numel()
    assert freq[0] == freq[2] == freq[6] == 0
    torch.testing.assert_close(freq, p[0] / p.sum(), atol=0.012, rtol=0)


def test_the_sampler_never_waits_for_the_device() -> None:
    """Every choice the sampler makes comes from host parameters: with the logits on the meta
    device (whose values cannot be read: any read raises) the whole pipeline still runs, so on a
    GPU nothing in it waits for the step that produced the logits."""
    logits = torch.empty(4, 1000, device="meta")
    out = apply_repetition_penalty(logits, [[1, 2], [], [3], [999]], [1.3, 1.0, 1.1, 1.2])
    out = apply_frequency_presence_penalties(out, [[5], [6, 6], [], [7]], 0.5, [0.0, 0.1, 0, 0])
    out = apply_logit_bias(out, [{3: 1.0}, None, {10: -100.0}, None])
    ids = sample_next(
        out,
        temperature=[0.0, 0.7, 1.0, 1.3],
        top_k=[0, 40, 0, 5],
        top_p=[1.0, 0.9, 0.5, 1.0],
        min_p=[0.0, 0.05, 0.0, 0.1],
    )
    assert ids.device.type == "meta" and ids.shape == (4,)
