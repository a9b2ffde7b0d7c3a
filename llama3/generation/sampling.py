"""Pure, batched sampling functions: logits processors, probability filters and the draw itself.

Every function takes a (batch, vocab) tensor and returns a new one; none modifies its input in place
(a function whose parameters make it a no-op may return its input tensor itself). Per-row parameters
are a Python scalar (same for every row), a sequence, or a 1-D tensor of length batch, so one batch
can mix requests with different settings. Filters on logits drop tokens by setting them to -inf;
filters on probabilities set them to 0 and renormalise. Parameters are checked, and every choice
that depends on them made, on the host: given host parameters, nothing here waits for the device
(no value is read back from it), so on a GPU the pipelined decode loop queues the next step
behind the sampler.

`sample_next` chains the usual pipeline: temperature -> top-k -> softmax -> top-p -> min-p -> draw,
with temperature 0 meaning greedy for that row. Penalties and logit bias are applied by the caller
before it, because they need token history this module does not own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .. import kernels
from ..errors import InvalidRequestError

# A per-row parameter: one value for every row, or one value per row.
RowParam = float | Sequence[float] | Tensor
IntRowParam = int | Sequence[int] | Tensor

__all__ = [
    "apply_frequency_presence_penalties",
    "apply_logit_bias",
    "apply_repetition_penalty",
    "apply_temperature",
    "greedy",
    "logprobs_of",
    "min_p_filter",
    "sample",
    "sample_next",
    "top_k_filter",
    "top_logprobs",
    "top_p_filter",
]


# ---- helpers -----------------------------------------------------------------------------------


def _check_2d(x: Tensor, what: str) -> tuple[int, int]:
    if x.dim() != 2:
        raise ValueError(f"{what} must have shape (batch, vocab), got {tuple(x.shape)}")
    return x.shape[0], x.shape[1]


# Per-row parameter checks: (predicate over the broadcast tensor, the rule in words).
_Check = tuple[Callable[[Tensor], Tensor], str]
_FINITE: _Check = (torch.isfinite, "a finite number")
_POSITIVE: _Check = (lambda t: (t > 0) & torch.isfinite(t), "a finite number > 0")
_NON_NEGATIVE: _Check = (lambda t: (t >= 0) & torch.isfinite(t), "a finite number >= 0")
_AT_LEAST_ZERO: _Check = (lambda t: t >= 0, "a number >= 0")
_UNIT: _Check = (lambda t: (t >= 0) & (t <= 1), "between 0 and 1")
_INTEGER: _Check = (lambda t: torch.ones_like(t, dtype=torch.bool), "an integer")


def _per_row(
    value: RowParam | IntRowParam,
    batch: int,
    name: str,
    check: _Check,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Broadcast `value` to a (batch,) host tensor of `dtype`, rejecting values that fail `check`
    (`_on` moves it to the device where the computation needs it)."""
    valid, rule = check
    t = torch.as_tensor(value)
    if t.device.type != "cpu":
        t = t.cpu()  # a device tensor given by the caller: read once
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise InvalidRequestError(f"{name} is NaN", hint=f"set {name} to {rule}", param=name)
    # A float where an integer is expected (2.5 for top_k) would otherwise truncate silently.
    if (
        not dtype.is_floating_point
        and t.is_floating_point()
        and not bool((torch.isfinite(t) & (t == t.round())).all())
    ):
        raise InvalidRequestError(
            f"{name} must be {rule}, got {value}", hint=f"set {name} to {rule}", param=name
        )
    t = t.to(dtype)
    if t.dim() == 0:
        t = t.expand(batch)
    elif t.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    ok = valid(t)
    if not bool(ok.all()):
        bad = t[~ok][0].item()
        raise InvalidRequestError(
            f"{name} must be {rule}, got {bad}", hint=f"set {name} to {rule}", param=name
        )
    return t


def _on(t: Tensor, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A host tensor on `like`'s device (a copy queued without waiting for the device's work)."""
    return t.to(device=like.device, dtype=dtype, non_blocking=True)


def _token_index(
    rows: Sequence[Sequence[int]], batch: int, vocab: int, device: torch.device, what: str
) -> tuple[Tensor, Tensor]:
    """Flatten per-row token lists into (row index, token id) tensors, checking the ids' range."""
    if len(rows) != batch:
        raise ValueError(f"{what} has {len(rows)} rows but the logits have {batch}")
    row_idx = [i for i, toks in enumerate(rows) for _ in toks]
    flat = [t for toks in rows for t in toks]
    if flat and (min(flat) < 0 or max(flat) >= vocab):
        bad = next(t for t in flat if not 0 <= t < vocab)
        raise InvalidRequestError(
            f"token id {bad} in {what} is outside the vocabulary (0..{vocab - 1})",
            hint="pass token ids produced by this model's tokenizer",
            param=what,
        )
    as_ids = torch.tensor(row_idx, dtype=torch.int64), torch.tensor(flat, dtype=torch.int64)
    return tuple(t.to(device, non_blocking=True) for t in as_ids)


def _renormalise(probs: Tensor) -> Tensor:
    return probs / probs.sum(dim=-1, keepdim=True)


# ---- logits processors -------------------------------------------------------------------------


def apply_repetition_penalty(
    logits: Tensor, prev_tokens: Sequence[Sequence[int]], penalty: RowParam
) -> Tensor:
    """CTRL / HF repetition penalty on every token seen so far (prompt and generated).

    A seen token's positive logit is divided by `penalty` and a negative one multiplied by it, so
    penalty > 1 discourages repeats and 1.0 is a no-op. A token counts once however often it was
    seen.
    """
    batch, vocab = _check_2d(logits, "logits")
    pen = _per_row(penalty, batch, "repetition_penalty", _POSITIVE)
    if len(prev_tokens) != batch:
        raise ValueError(f"prev_tokens has {len(prev_tokens)} rows but the logits have {batch}")
    if not any(prev_tokens) or bool((pen == 1).all()):
        return logits
    rows, ids = _token_index(prev_tokens, batch, vocab, logits.device, "prev_tokens")
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=logits.device)
    seen[rows, ids] = True
    p = _on(pen, logits, logits.dtype).unsqueeze(-1)
    penalised = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalised, logits)


def apply_frequency_presence_penalties(
    logits: Tensor,
    generated_tokens: Sequence[Sequence[int]],
    frequency: RowParam,
    presence: RowParam,
) -> Tensor:
    """OpenAI penalties on the generated output (not the prompt).

    logit[t] -= frequency * count(t) + presence * (count(t) > 0). Negative values encourage
    repeats; range limits (OpenAI: -2..2) are the request layer's business.
    """
    batch, vocab = _check_2d(logits, "logits")
    dev = logits.device
    freq = _per_row(frequency, batch, "frequency_penalty", _FINITE)
    pres = _per_row(presence, batch, "presence_penalty", _FINITE)
    if len(generated_tokens) != batch:
        raise ValueError(
            f"generated_tokens has {len(generated_tokens)} rows but the logits have {batch}"
        )
    if not any(generated_tokens) or bool(((freq == 0) & (pres == 0)).all()):
        return logits
    rows, ids = _token_index(generated_tokens, batch, vocab, dev, "generated_tokens")
    counts = torch.zeros(batch, vocab, dtype=torch.float32, device=dev)
    counts.index_put_((rows, ids), torch.ones_like(ids, dtype=torch.float32), accumulate=True)
    delta = _on(freq, counts).unsqueeze(-1) * counts + _on(pres, counts).unsqueeze(-1) * (
        counts > 0
    )
    return (logits.float() - delta).to(logits.dtype)


def apply_logit_bias(logits: Tensor, biases: Sequence[Mapping[int, float] | None]) -> Tensor:
    """Add a per-row {token id: bias} map to the logits (OpenAI `logit_bias`); None = no bias."""
    batch, vocab = _check_2d(logits, "logits")
    if len(biases) != batch:
        raise ValueError(f"biases has {len(biases)} rows but the logits have {batch}")
    if not any(biases):
        return logits
    rows = [[int(t) for t in (b or {})] for b in biases]
    row_idx, ids = _token_index(rows, batch, vocab, logits.device, "logit_bias")
    values = [float(v) for b in biases for v in (b or {}).values()]
    if not all(math.isfinite(v) for v in values):
        raise InvalidRequestError(
            "logit_bias values must be finite numbers",
            hint="use values between -100 and 100 (-100 effectively bans a token)",
            param="logit_bias",
        )
    out = logits.clone()
    out.index_put_(
        (row_idx, ids),
        _on(torch.tensor(values, dtype=logits.dtype), logits),
        accumulate=True,
    )
    return out


def apply_temperature(logits: Tensor, temperature: RowParam) -> Tensor:
    """Divide each row by its temperature (> 0; greedy rows are `sample_next`'s job)."""
    batch, _ = _check_2d(logits, "logits")
    t = _per_row(temperature, batch, "temperature", _POSITIVE)
    if bool((t == 1).all()):
        return logits
    return logits / _on(t, logits, logits.dtype).unsqueeze(-1)


def top_k_filter(logits: Tensor, k: IntRowParam) -> Tensor:
    """Keep each row's k largest logits, set the rest to -inf; k <= 0 or k >= vocab is a no-op.

    Tokens tied with the k-th largest value are all kept, so a row may keep more than k tokens
    (the same threshold rule as HF's TopKLogitsWarper); which of tied tokens to drop would
    otherwise be arbitrary.
    """
    batch, vocab = _check_2d(logits, "logits")
    kk = _per_row(k, batch, "top_k", _INTEGER, torch.int64)
    active = (kk > 0) & (kk < vocab)
    if not bool(active.any()):
        return logits
    k_eff = torch.where(active, kk, 1)
    k_max = int(k_eff.max())
    top = torch.topk(logits, k_max, dim=-1).values  # sorted descending
    kth = top.gather(-1, _on(k_eff - 1, top).unsqueeze(-1))
    kth = kth.masked_fill(~_on(active, kth).unsqueeze(-1), -math.inf)
    return logits.masked_fill(logits < kth, -math.inf)


# ---- probability filters -----------------------------------------------------------------------


def top_p_filter(probs: Tensor, p: RowParam) -> Tensor:
    """Nucleus filter with Meta's rule (`sample_top_p`), then renormalise; p >= 1 is a no-op.

    Sorted by probability (descending, ties by lower id first), a token is dropped when the mass
    of the tokens before it exceeds p. The kept set is the smallest prefix whose mass reaches p,
    and the top token always survives (p = 0 keeps only it).
    """
    batch, _ = _check_2d(probs, "probs")
    pp = _per_row(p, batch, "top_p", _AT_LEAST_ZERO)
    active = pp < 1
    if not bool(active.any()):
        return probs
    if probs.device.type == "cpu":
        kept = _top_p_among_the_largest(probs, pp, active)
        if kept is not None:
            return kept
    pp, active = _on(pp, probs, probs.dtype), _on(active, probs)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    # The top token's mass_before is exactly 0, so it survives for every p >= 0.
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    drop_sorted = (mass_before > pp.unsqueeze(-1)) & active.unsqueeze(-1)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    filtered = _renormalise(probs.masked_fill(drop, 0.0))
    # Rows with p >= 1 come back untouched (not even renormalised).
    return torch.where(active.unsqueeze(-1), filtered, probs)


#: candidates `top_p_filter` sorts on the CPU before falling back to sorting the whole vocabulary
_TOP_P_CANDIDATES = 256


def _top_p_among_the_largest(probs: Tensor, pp: Tensor, active: Tensor) -> Tensor | None:
    """`top_p_filter` from each row's largest probabilities alone, when they settle it; else None.

    Sorting a 128k vocabulary costs ~10 ms on a CPU core, more than a small model's decode step.
    The kept tokens are a prefix of the sorted row; when every kept token is strictly more likely
    than the K-th largest, all of them and all tokens tied with them are among the K largest, and
    the K candidates sorted by (probability, then lower id) are the row's own sorted prefix: the
    same tokens are kept and renormalised by the same sum, bit for bit. The check reads values,
    hence the CPU only (on a GPU the full sort never waits for the device)."""
    k = min(_TOP_P_CANDIDATES, probs.shape[-1])
    vals, ids = torch.topk(probs, k, dim=-1)  # descending; ties in no promised order
    by_id = torch.argsort(ids, dim=-1)
    vals, ids = vals.gather(-1, by_id), ids.gather(-1, by_id)
    order = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    vals, ids = vals.gather(-1, order), ids.gather(-1, order)
    keep = (torch.cumsum(vals, dim=-1) - vals) <= pp.to(vals.dtype).unsqueeze(-1)
    n_keep = keep.sum(-1)
    smallest_kept = vals.gather(-1, (n_keep - 1).unsqueeze(-1)).squeeze(-1)
    if not bool(((smallest_kept > vals[:, -1]) | ~active).all()):
        return None
    filtered = torch.zeros_like(probs).scatter(-1, ids, vals * keep)
    return torch.where(active.unsqueeze(-1), _renormalise(filtered), probs)


def min_p_filter(probs: Tensor, min_p: RowParam) -> Tensor:
    """Drop tokens whose probability is below min_p times the row's top probability; renormalise.

    min_p must lie in [0, 1]; 0 is a no-op. The top token always survives.
    """
    batch, _ = _check_2d(probs, "probs")
    mp = _per_row(min_p, batch, "min_p", _UNIT)
    active = mp > 0
    if not bool(active.any()):
        return probs
    threshold = probs.amax(dim=-1, keepdim=True) * _on(mp, probs, probs.dtype).unsqueeze(-1)
    filtered = _renormalise(probs.masked_fill(probs < threshold, 0.0))
    return torch.where(_on(active, probs).unsqueeze(-1), filtered, probs)


# ---- choosing tokens ---------------------------------------------------------------------------


def sample(probs: Tensor, generators: Sequence[torch.Generator | None] | None = None) -> Tensor:
    """Draw one token id per row, shape (batch,) int64.

    A row with its own generator is drawn alone from that generator, so its result depends only on
    its own probabilities and seed, never on the other rows of the batch. Rows without one share
    the global RNG (one batched draw).
    """
    batch, _ = _check_2d(probs, "probs")
    if generators is None:
        return _draw(probs)
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for {batch} rows")
    out = torch.empty(batch, dtype=torch.int64, device=probs.device)
    shared = [i for i, g in enumerate(generators) if g is None]
    if shared:
        idx = _on(torch.tensor(shared), probs)
        out[idx] = _draw(probs[idx])
    for i, g in enumerate(generators):
        if g is not None:
            out[i] = _draw(probs[i : i + 1], g)[0]
    return out


def _draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One id per row with probability `probs` (unnormalised is fine): the argmax of p / E over
    exponential noise E = -log U (an exponential race, as `torch.multinomial` draws one sample).
    Made from uniform numbers, the noise costs a sixth of `exponential_`'s (0.14 against 0.8 ms
    for a 49k vocabulary on a CPU core), and nothing is read back from the device (multinomial
    checks its input there first). A race is also stable: a tiny change of the logits (another
    batch, another kernel) changes the winner only when two tokens nearly tie, where inverting
    the cumulative sum would move with the rounding of every token before the drawn one. A token
    of probability 0 never wins (0 / E = 0), nor does U = 0 (E = inf)."""
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    return _argmax(probs / u.log_().neg_())


def _argmax(x: Tensor) -> Tensor:
    """The last dim's argmax of a (batch, vocab) matrix (the first of tied maxima, NaN counting
    as the largest): on a CPU the native kernel's (two vectorized passes: ~4 us for a 49k
    vocabulary), else max's indices by the same rule (2.4x faster than argmax's on a CPU)."""
    if x.dim() == 2 and x.shape[1] > 0 and x.stride(1) == 1 and kernels.native_elementwise(x):
        return torch.ops.llama3_kernels.argmax_rows(x)
    return x.max(dim=-1).indices


def greedy(logits: Tensor) -> Tensor:
    """Argmax per row, shape (batch,) int64; ties go to the lowest id."""
    _check_2d(logits, "logits")
    return _argmax(logits)


def logprobs_of(logits: Tensor, token_ids: Tensor | Sequence[int]) -> Tensor:
    """Log-probability (float32) of `token_ids` under softmax(logits).

    token_ids has shape (batch,) (one id per row, result (batch,)) or (batch, n) (result (batch, n)).
    """
    batch, vocab = _check_2d(logits, "logits")
    ids = torch.as_tensor(token_ids, dtype=torch.int64, device=logits.device)
    squeeze = ids.dim() == 1
    if squeeze:
        ids = ids.unsqueeze(-1)
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(
            f"token_ids must have shape ({batch},) or ({batch}, n), got {tuple(ids.shape)}"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"token_ids must lie in 0..{vocab - 1}")
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids)
    return lp.squeeze(-1) if squeeze else lp


def top_logprobs(logits: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The n most likely tokens per row: (log-probabilities float32, ids int64), each (batch, n).

    Sorted best first; n larger than the vocabulary is clamped to it.
    """
    _, vocab = _check_2d(logits, "logits")
    if n < 0:
        raise InvalidRequestError(
            f"top_logprobs must be >= 0, got {n}",
            hint="ask for 0 to 20 top log-probabilities",
            param="top_logprobs",
        )
    lp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(lp, min(n, vocab), dim=-1)
    return values, ids


def sample_next(
    logits: Tensor,
    *,
    temperature: RowParam = 1.0,
    top_k: IntRowParam = 0,
    top_p: RowParam = 1.0,
    min_p: RowParam = 0.0,
    generators: Sequence[torch.Generator | None] | None = None,
) -> Tensor:
    """Pick the next token per row: temperature -> top-k -> softmax -> top-p -> min-p -> draw.

    Rows with temperature 0 take the argmax of `logits` and leave their generator untouched; the
    other rows are sampled as a sub-batch, each with its own generator when one is given.
    """
    batch, _ = _check_2d(logits, "logits")
    temp = _per_row(temperature, batch, "temperature", _NON_NEGATIVE)
    kk = _per_row(top_k, batch, "top_k", _INTEGER, torch.int64)
    pp = _per_row(top_p, batch, "top_p", _AT_LEAST_ZERO)
    mp = _per_row(min_p, batch, "min_p", _UNIT)
    if generators is not None and len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for {batch} rows")

    is_greedy = temp == 0
    if bool(is_greedy.all()):
        return greedy(logits)
    rows = (~is_greedy).nonzero().squeeze(-1)  # on the host, like every parameter here
    all_sampled = rows.numel() == batch
    rows_on = None if all_sampled else _on(rows, logits)
    sub = logits if all_sampled else logits[rows_on]
    # Subtracting the row max first keeps a tiny temperature from overflowing to inf (and softmax
    # to NaN); softmax and every filter below are shift-invariant.
    sub = sub.float()
    sub = sub - sub.amax(dim=-1, keepdim=True)
    sub = apply_temperature(sub, temp[rows])
    sub = top_k_filter(sub, kk[rows])
    probs = torch.softmax(sub, dim=-1)
    probs = top_p_filter(probs, pp[rows])
    probs = min_p_filter(probs, mp[rows])
    gens = None if generators is None else [generators[i] for i in rows.tolist()]
    drawn = sample(probs, gens)
    if all_sampled:
        return drawn
    out = greedy(logits)
    out[rows_on] = drawn
    return out
