"""Decode steps through the native layer kernel give what the module path gives."""

from __future__ import annotations

import pytest
import torch

from llama3 import Llama, kernels
from llama3.generation.params import SamplingParams
from llama3.model import native_decode
from llama3.model.kv_cache import KVCache


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_native_layers_decode_as_the_modules_do(tiny, scheme):
    assert kernels.available(), kernels.unavailable_reason()
    llm = Llama.load(tiny.path("3.1", "gguf"), max_seq_len=96, max_batch_size=2, quantize=scheme)
    assert native_decode.eligible(llm.model)
    # rows of different prompt lengths: the shorter one decodes while the longer is still forced
    prompts = [list(range(1000, 1030)), list(range(2000, 2021))]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, logprobs=0)
    native = llm.complete(prompts, params)
    llm.model._native_decode = False  # every step through the modules
    modules = llm.complete(prompts, params)
    # both paths round activations onto an int16 grid, and their norms sum in different
    # orders: a value can land one grid step away; the AVX2 build's group-32 int4 kernel rounds
    # them to int8 per 32-block, whose step is 2^8 times coarser
    atol = 5e-3 if scheme == "int4" and kernels.int4_q8() else 5e-4
    for n, m in zip(native, modules):
        assert n.tokens == m.tokens
        torch.testing.assert_close(
            torch.tensor(n.logprobs), torch.tensor(m.logprobs), rtol=0, atol=atol
        )


def test_one_native_step_matches_the_modules_and_fills_the_same_cache(tiny):
    llm = Llama.load(tiny.path("3.0", "gguf"), max_seq_len=64, max_batch_size=3, quantize="int8")
    model = llm.model
    caches = [KVCache(model.params, 3, 64) for _ in range(2)]
    prompt = torch.randint(0, 5000, (3, 17), generator=torch.Generator().manual_seed(0))
    step = torch.tensor([[11], [22], [33]])
    out = []
    for use_native, cache in zip((True, False), caches):
        model._native_decode = None if use_native else False  # None: decide again
        model(prompt, 0, cache)
        out.append(model(step, 17, cache, last_only=True))
    assert torch.equal(out[0].argmax(-1), out[1].argmax(-1))
    # the two paths' norms sum in different orders, so an activation can land one step of its
    # int16 grid away (2^-15 of its row's largest), and that carries to a few of 128k logits
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=2e-4 * out[1].abs().max().item())
    for layer in range(model.params.n_layers):
        for a, b in (
            (caches[0].k[layer], caches[1].k[layer]),
            (caches[0].v[layer], caches[1].v[layer]),
        ):
            # a grid step of one layer's activations (see above) moves the next layer's keys
            # by a few 1e-5 of their largest
            # only the 18 written positions: the rest of the cache is uninitialised memory
            a, b = a[:, :, :18], b[:, :, :18]
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * b.abs().max().item())


def test_float_models_and_compile_keep_their_paths(tiny):
    path = tiny.path("3.0", "gguf")
    assert not native_decode.eligible(Llama.load(path, max_seq_len=64).model)
    for scheme in ("int8", "int4"):
        llm = Llama.load(path, max_seq_len=64, quantize=scheme)
        assert llm.compile(batch_sizes=[1]) == 0.0  # nothing to compile: the native step is faster
        assert llm._decoder is None


def test_a_decode_only_engine_step_matches_the_modules(tiny):
    from llama3.model.paged_cache import PagedBatch, PagedKVPool, Segment

    llm = Llama.load(tiny.path("3.1", "gguf"), max_seq_len=64, quantize="int8")
    model = llm.model
    lens = [9, 4]  # two sequences, their slots interleaved in the pool as blocks would be
    slots = [torch.tensor([3, 7, 8, 12, 13, 14, 20, 21, 22, 30]), torch.tensor([0, 1, 2, 40, 41])]
    prompts = [
        torch.randint(0, 5000, (n,), generator=torch.Generator().manual_seed(n)) for n in lens
    ]
    got = []
    for use_native in (True, False):
        pool = PagedKVPool(model.params, num_blocks=16, block_size=4)
        assert pool.native
        for p, s in zip(prompts, slots):  # prefill each sequence (module path)
            batch = PagedBatch(pool, s[: len(p)], [Segment(0, len(p), s[: len(p)])])
            model(p[None], cache=batch, positions=torch.arange(len(p)))
        model._native_decode = None if use_native else False  # None: decide again
        step = PagedBatch(
            pool,
            torch.stack([s[n] for s, n in zip(slots, lens)]),
            [Segment(i, 1, s[: n + 1]) for i, (s, n) in enumerate(zip(slots, lens))],
        )
        assert (
            native_decode.usable(model, step, torch.zeros(1, 2), torch.tensor(lens)) == use_native
        )
        got.append(model(torch.tensor([[11, 22]]), cache=step, positions=torch.tensor(lens)))
    assert torch.equal(got[0].argmax(-1), got[1].argmax(-1))
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=1e-4 * got[1].abs().max().item())


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_the_layer_stack_gives_the_same_bits_on_any_thread_count(tiny, scheme):
    """The stack's threads split every product by weight rows and every attention by heads; a
    row's arithmetic never depends on the split, so 1, 2 and 3 threads (some with empty shares
    of the tiny model's 64 columns) write the same logits and cache entries bit for bit."""
    import copy

    llm = Llama.load(tiny.path("3.1", "gguf"), max_seq_len=64, max_batch_size=3, quantize=scheme)
    model = llm.model
    prompt = torch.randint(0, 5000, (3, 13), generator=torch.Generator().manual_seed(1))
    filled = KVCache(model.params, 3, 64)
    model(prompt, 0, filled)
    step = torch.tensor([[5], [6], [7]])
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            cache = copy.deepcopy(filled)
            assert native_decode.usable(model, cache, step, torch.tensor([13]))
            got.append((model(step, 13, cache), cache))
    finally:
        torch.set_num_threads(before)
    (logits, cache), others = got[0], got[1:]
    for other_logits, other_cache in others:
        assert torch.equal(logits, other_logits)
        # the 14 written positions: the rest is uninitialised memory, where a NaN never equals
        for a, b in zip(cache.k + cache.v, other_cache.k + other_cache.v):
            assert torch.equal(a[:, :, :14], b[:, :, :14])


def test_a_token_outside_the_vocabulary_is_a_clear_error(tiny):
    llm = Llama.load(tiny.path("3.0", "gguf"), max_seq_len=32, quantize="int8")
    model = llm.model
    cache = KVCache(model.params, 1, 32)
    model(torch.tensor([[5, 6, 7]]), 0, cache)
    vocab = model.params.vocab_size
    assert native_decode.usable(model, cache, torch.tensor([[vocab]]), torch.tensor([3]))
    with pytest.raises(RuntimeError, match=f"token id {vocab} outside the vocabulary"):
        model(torch.tensor([[vocab]]), 3, cache)
