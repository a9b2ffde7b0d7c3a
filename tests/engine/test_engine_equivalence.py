"""The continuous-batching engine gives, at temperature 0, exactly the tokens of running each request
alone, whatever the batch, arrival times, chunking and preemption; seeded sampling does not depend
on the batch either."""

from __future__ import annotations

import pytest

from llama3 import Llama, SamplingParams
from llama3.engine.config import EngineConfig
from llama3.engine.engine import LLMEngine


@pytest.fixture(scope="module")
def llm(tiny):
    return Llama.load(tiny.path("3.1", "meta"), max_seq_len=256, max_batch_size=1)


PROMPTS = [
    "Hi",
    "A considerably longer prompt that will be split into several prefill chunks by the scheduler",
    "Medium length prompt here",
    # shares the long prompt's first blocks: a prefix-cache hit
    "A considerably longer prompt that will be split into several prefill chunks by the scheduler, again",
    "Another prompt with its own length",
]


@pytest.fixture(scope="module", params=["int8", "int4"])
def llm_quantized(tiny, request):
    """The server's engine runs quantized models through the same batched products (and, on
    steps that only decode, the same native layers)."""
    path = tiny.path("3.1", "meta")
    return Llama.load(path, max_seq_len=256, max_batch_size=1, quantize=request.param)


def _alone(llm, prompt_ids, params):
    return llm.complete([prompt_ids], params)[0]


ROOMY = EngineConfig(
    max_num_seqs=8, max_num_batched_tokens=64, block_size=16, num_blocks=64, max_model_len=256
)
# tiny blocks and budget: chunked prefill everywhere, and preemption when blocks run out
TIGHT = EngineConfig(
    max_num_seqs=4, max_num_batched_tokens=8, block_size=4, num_blocks=24, max_model_len=64
)


@pytest.mark.parametrize("cfg", [ROOMY, TIGHT])
def test_greedy_engine_equals_running_alone(llm, cfg):
    _check_greedy_equivalence(llm, cfg)


def test_greedy_quantized_engine_equals_running_alone(llm_quantized):
    """Quantized rows are put on their own grid: batching cannot change a token."""
    _check_greedy_equivalence(llm_quantized, ROOMY)


def _check_greedy_equivalence(llm, cfg):
    engine = LLMEngine(llm.model, llm.tokenizer, cfg)
    prompts = [llm.tokenizer.encode_prompt(p) for p in PROMPTS]
    max_tokens = [12, 5, 20, 12, 9]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    # Staggered arrivals: two requests now, the rest while the first ones are decoding.
    ids = [engine.add_request(prompts[0], params[0]), engine.add_request(prompts[1], params[1])]
    got: dict[str, list[int]] = {}
    pending = list(range(2, len(prompts)))
    steps = 0
    while engine.has_unfinished() or pending:
        if pending and steps % 3 == 2:
            i = pending.pop(0)
            ids.append(engine.add_request(prompts[i], params[i]))
        for o in engine.step():
            got.setdefault(o.request_id, []).append(o.event.token)
        steps += 1
    for rid, p, sp in zip(ids, prompts, params):
        want = _alone(llm, p, sp).tokens
        assert got[rid] == want
    assert engine.block_manager.num_free_blocks == cfg.num_blocks
    assert engine.block_manager.prefix_hit_rate > 0


def test_seeded_sampling_does_not_depend_on_the_batch(llm):
    engine = LLMEngine(
        llm.model,
        llm.tokenizer,
        EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, num_blocks=32, max_model_len=128),
    )
    p = SamplingParams(temperature=1.0, top_p=0.95, seed=11, max_tokens=10, ignore_eos=True)
    ids = llm.tokenizer.encode_prompt("The weather today")
    alone = engine.generate([ids], p)[0].tokens
    other = SamplingParams(temperature=0.7, seed=5, max_tokens=14, ignore_eos=True)
    batched = engine.generate(
        [llm.tokenizer.encode_prompt("Some other request first"), ids], [other, p]
    )[1].tokens
    assert alone == batched == _alone(llm, ids, p).tokens


def test_abort_frees_blocks_within_one_step(llm):
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, num_blocks=32, max_model_len=128)
    engine = LLMEngine(llm.model, llm.tokenizer, cfg)
    rid = engine.add_request(
        llm.tokenizer.encode_prompt("Abort me please"),
        SamplingParams(temperature=0, max_tokens=50, ignore_eos=True),
    )
    engine.step()
    assert engine.block_manager.num_free_blocks < cfg.num_blocks
    assert engine.abort(rid)
    assert engine.block_manager.num_free_blocks == cfg.num_blocks and not engine.has_unfinished()


def test_real_model_engine_equals_alone(smollm2):
    engine = LLMEngine(
        smollm2.model,
        smollm2.tokenizer,
        EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, num_blocks=64, max_model_len=512),
    )
    dialogs = [
        [{"role": "user", "content": q}]
        for q in ("What is 2+2?", "Name a fruit.", "Say hello in French.")
    ]
    prompts = [smollm2.formatter.encode_dialog_prompt(d) for d in dialogs]
    params = SamplingParams(temperature=0, max_tokens=24)
    got = engine.generate(prompts, params)
    for p, r in zip(prompts, got):
        want = smollm2.complete([p], params)[0]
        assert (
            r.tokens == want.tokens
            and r.text == want.text
            and r.finish_reason == want.finish_reason
        )


@pytest.mark.parametrize(
    "cfg",
    [
        EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, block_size=16, num_blocks=64),
        # prompts split in 8-token chunks, tiny blocks
        EngineConfig(max_num_seqs=4, max_num_batched_tokens=8, block_size=4, num_blocks=64),
    ],
)
def test_echo_prompt_logprobs_equal_the_offline_path(llm, cfg):
    """Prompt logprobs (echo) from chunked prefill equal the offline path's (itself checked against
    transformers), also for a prompt whose prefix is already cached by an earlier request."""
    engine = LLMEngine(llm.model, llm.tokenizer, cfg)
    prompts = [llm.tokenizer.encode_prompt(p) for p in (PROMPTS[1], PROMPTS[3], PROMPTS[0])]
    params = SamplingParams(temperature=0, max_tokens=3, echo=True, logprobs=2)
    engine.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=2))  # fills the cache
    seen: dict[str, tuple] = {}
    ids = [engine.add_request(p, params) for p in prompts]
    while engine.has_unfinished():
        for o in engine.step():
            if o.prompt_logprobs is not None:
                seen[o.request_id] = (o.prompt_logprobs, o.prompt_top_logprobs)
    for rid, p in zip(ids, prompts):
        want = _alone(llm, p, params).prompt_logprobs
        lps, tops = seen[rid]
        assert lps[0] is None and len(lps) == len(p) == len(want)
        assert lps[1:] == pytest.approx(want[1:], abs=1e-5)
        assert tops[0] is None and all(len(t) == 2 for t in tops[1:])
        assert all(t[0][1] >= lp - 1e-6 for t, lp in zip(tops[1:], lps[1:]))
    assert engine.block_manager.num_free_blocks == cfg.num_blocks


@pytest.mark.parametrize("length", [100, 65], ids=["36-left", "1-left"])
def test_a_prefix_cache_hit_does_not_change_a_quantized_answer(llm_quantized, length):
    """The rows a step computes depend on the batch: a prompt of 100 tokens runs as 100 rows,
    or as the 36 a prefix-cache hit on its first 64 leaves (or, for 65 tokens, the last one
    alone, which must still run as a prompt row, not through the decode path). No product or
    attention may choose its path by row count (int4 once did above 48 rows; on a CPU with AMX,
    bfloat16 from 64 rows): the logprobs are the same bits."""
    llm = llm_quantized
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=256, num_blocks=64, max_model_len=256)
    engine = LLMEngine(llm.model, llm.tokenizer, cfg)  # the whole prompt in one step
    words = " ".join(f"w{i}" for i in range(200))
    prompt = llm.tokenizer.encode(words, bos=True, eos=False)[:length]
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    first = engine.generate([prompt], sp)[0]
    engine.block_manager.reset_prefix_cache()
    other = prompt[:64] + llm.tokenizer.encode(" something else", bos=False, eos=False)
    engine.generate([other], sp)  # leaves the first 64 tokens' blocks in the prefix cache
    queried, hits = engine.block_manager.queried_tokens, engine.block_manager.hit_tokens
    steps = llm.model.native_steps
    again = engine.generate([prompt], sp)[0]
    # the native decode stack ran for the 7 generated tokens fed back, never for a prompt row
    assert llm.model.native_steps - steps == 7
    assert engine.block_manager.hit_tokens - hits == 64
    assert engine.block_manager.queried_tokens - queried == length
    assert again.tokens == first.tokens
    assert again.logprobs == first.logprobs  # bit for bit, not only the (robust) argmax
