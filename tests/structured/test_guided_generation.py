"""Constrained decoding on the tiny random Llama 3 model: the token bytes the grammar engine sees
(against tiktoken), the mask (against Python's `re` over the whole vocabulary), the compile cache,
and generation in both loops (`Llama.complete` and the continuous-batching engine) whose outputs
validate with `jsonschema` at temperature 1, batch-independently."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
from conftest import SPECIALS_31, tiktoken_oracle

from llama3 import Llama, SamplingParams
from llama3.engine.config import EngineConfig
from llama3.engine.engine import LLMEngine
from llama3.errors import InvalidRequestError
from llama3.structured import GuidedDecoding
from llama3.structured.compiler import compiler_for
from llama3.structured.matcher import make_guide, mask_logits
from llama3.structured.vocab import token_vocab

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "pet": {"enum": ["cat", "dog", None]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm(tiny):
    return Llama.load(tiny.path("3.1", "meta"), max_seq_len=256, max_batch_size=4)


def test_token_bytes_are_tiktokens_and_specials_are_empty(llm):
    v = token_vocab(llm.tokenizer)
    enc = tiktoken_oracle(SPECIALS_31)
    assert v.size == llm.tokenizer.n_words
    specials = set(SPECIALS_31.values())
    assert v.special_ids == specials
    for i in range(v.size):
        want = b"" if i in specials else enc.decode_single_token_bytes(i)
        assert v.token_bytes[i] == want, i
    assert set(v.stop_ids) == set(llm.tokenizer.stop_tokens) and v.stop_ids


def test_regex_mask_is_exactly_the_tokens_that_extend_a_match(llm):
    """After "4", `[0-9]{3}` allows a token iff "4" + its text fully matches a prefix of a
    3-digit string; once "123" is complete, only the stop tokens are left."""
    tok = llm.tokenizer
    v = token_vocab(tok)
    g = make_guide(GuidedDecoding(regex="[0-9]{3}"), tok)
    g.accept(tok.encode("4", bos=False, eos=False)[0])
    masked = mask_logits(torch.zeros(1, v.size), [0], [g])[0]
    allowed = set(torch.isfinite(masked).nonzero().flatten().tolist())
    prefix = re.compile(r"[0-9]{0,2}")
    want = {i for i, b in enumerate(v.token_bytes) if b and prefix.fullmatch(b.decode("latin-1"))}
    assert allowed == want and len(want) > 10
    for t in tok.encode("12", bos=False, eos=False):
        g.accept(t)
    masked = mask_logits(torch.zeros(2, v.size), [1], [g])
    assert torch.isfinite(masked[0]).all()  # an unconstrained row is left alone
    assert set(torch.isfinite(masked[1]).nonzero().flatten().tolist()) == set(v.stop_ids)
    assert g.complete


def test_compiles_are_cached_by_key(llm):
    c = compiler_for(llm.tokenizer)
    before = (c.stats.compiles, c.stats.hits)
    schema = {"type": "object", "properties": {"cache_probe": {"type": "integer"}}}
    first = c.compile(GuidedDecoding(json_schema=schema))
    # the same schema written in another key order is the same key
    again = c.compile(GuidedDecoding(json_schema=dict(reversed(list(schema.items())))))
    assert again is first
    assert (c.stats.compiles, c.stats.hits) == (before[0] + 1, before[1] + 1)
    c.compile(GuidedDecoding(regex="cache-probe"))
    assert c.stats.compiles == before[0] + 2


@pytest.mark.parametrize(
    ("guided", "says"),
    [
        (GuidedDecoding(json_schema={"not": {"type": "string"}}), '"not"'),
        (GuidedDecoding(json_schema={"type": "object", "uniqueItems": True}), "uniqueItems"),
        (GuidedDecoding(json_schema={"type": "strin"}), "strin"),
        (GuidedDecoding(regex="(a|b"), "regex"),
        (GuidedDecoding(regex="[^\\s\\S]"), "matches no text at all"),
        (GuidedDecoding(grammar='root ::= "a" | b'), "b"),
    ],
)
def test_bad_constraints_fail_at_admission_naming_the_problem(llm, guided, says):
    p = SamplingParams(max_tokens=4, guided=guided)
    ids = llm.tokenizer.encode_prompt("Hi")
    with pytest.raises(InvalidRequestError, match=re.escape(says)):
        llm.complete([ids], p)
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_blocks=16, max_model_len=128))
    with pytest.raises(InvalidRequestError, match=re.escape(says)):
        engine.add_request(ids, p)
    assert not engine.has_unfinished()


def test_sampled_json_validates_at_temperature_1(llm):
    ids = llm.tokenizer.encode_prompt("Give me a record")
    params = [
        SamplingParams(
            temperature=1.0,
            top_p=1.0,
            seed=s,
            max_tokens=120,
            guided=GuidedDecoding(json_schema=SCHEMA),
        )
        for s in range(4)
    ]
    for r in llm.complete([ids] * 4, params):
        assert r.finish_reason == "stop", r.text
        assert r.tokens[-1] in llm.tokenizer.stop_tokens
        jsonschema.validate(json.loads(r.text), SCHEMA)


def test_greedy_rows_are_masked_too(llm):
    """Temperature 0 takes the argmax fast path: the constraint must hold there as well."""
    ids = llm.tokenizer.encode_prompt("Count")
    r = llm.complete(
        [ids],
        SamplingParams(temperature=0, max_tokens=20, guided=GuidedDecoding(regex=r"[a-e]{2,5}!")),
    )[0]
    assert re.fullmatch(r"[a-e]{2,5}!", r.text) and r.finish_reason == "stop"
    plain = llm.complete([ids], SamplingParams(temperature=0, max_tokens=8))[0]
    assert not re.fullmatch(r"[a-e]{2,5}!", plain.text)  # the random model would not do it alone


def test_ignore_eos_finishes_when_the_grammar_is_complete(llm):
    ids = llm.tokenizer.encode_prompt("Pick")
    p = SamplingParams(
        temperature=1.0,
        seed=3,
        max_tokens=50,
        ignore_eos=True,
        guided=GuidedDecoding(regex="(yes|no)"),
    )
    r = llm.complete([ids], p)[0]
    assert r.text in ("yes", "no") and r.finish_reason == "stop"
    assert not set(r.tokens) & set(llm.tokenizer.stop_tokens)


def test_engine_mixed_batch_equals_each_alone(llm):
    """Schema, regex and plain requests in one continuous batch each get the tokens they get
    alone (seeded), and the same as `Llama.complete`."""
    tok = llm.tokenizer
    schema = GuidedDecoding(json_schema=SCHEMA)
    reqs = [
        (
            tok.encode_prompt("A record"),
            SamplingParams(temperature=1.0, seed=1, max_tokens=80, guided=schema),
        ),
        (
            tok.encode_prompt("A date, please"),
            SamplingParams(
                temperature=0.8,
                seed=2,
                max_tokens=20,
                guided=GuidedDecoding(regex=r"20[0-9]{2}-[01][0-9]"),
            ),
        ),
        (tok.encode_prompt("Free text"), SamplingParams(temperature=1.0, seed=3, max_tokens=6)),
    ]
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, num_blocks=64, max_model_len=256)
    engine = LLMEngine(llm.model, tok, cfg)
    together = engine.generate([p for p, _ in reqs], [sp for _, sp in reqs])
    for (prompt, sp), got in zip(reqs, together):
        alone = engine.generate([prompt], sp)[0]
        assert got.tokens == alone.tokens and got.text == alone.text
        assert got.finish_reason == alone.finish_reason
    offline = llm.complete([reqs[0][0]], reqs[0][1])[0]
    assert offline.tokens == together[0].tokens
    jsonschema.validate(json.loads(together[0].text), SCHEMA)
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]", together[1].text)


def test_max_tokens_cuts_the_json_as_without_a_constraint(llm):
    ids = llm.tokenizer.encode_prompt("A record please")
    sp = dict(temperature=1.0, seed=4, guided=GuidedDecoding(json_schema=SCHEMA))
    full = llm.complete([ids], SamplingParams(max_tokens=120, **sp))[0]
    cut = llm.complete([ids], SamplingParams(max_tokens=5, **sp))[0]
    assert cut.finish_reason == "length" and len(cut.tokens) == 5
    assert cut.tokens == full.tokens[:5] and full.text.startswith(cut.text)


def test_logprobs_are_the_raw_models(llm):
    """The mask changes what is drawn, not the logprobs reported (those of the model)."""
    ids = llm.tokenizer.encode_prompt("Digits")
    g = GuidedDecoding(regex="[0-9]{3}")
    r = llm.complete([ids], SamplingParams(temperature=0, max_tokens=3, logprobs=0, guided=g))[0]
    # each token's logprob given its prefix under the plain model, from the echo path
    echo = llm.complete([ids + r.tokens], SamplingParams(max_tokens=1, echo=True))[0]
    assert r.logprobs == pytest.approx(echo.prompt_logprobs[len(ids) :], abs=1e-4)
    assert min(r.logprobs) < -1  # digits are not what the random model favours


def test_the_torch_mask_path_equals_the_numpy_one(llm):
    """bfloat16 logits take the device path (what a GPU runs): same forbidden set, other rows and
    the input untouched."""
    tok = llm.tokenizer
    guides = [make_guide(GuidedDecoding(json_schema=SCHEMA), tok) for _ in range(2)]
    guides[1].accept(tok.encode("{", bos=False, eos=False)[0])
    logits = torch.randn(3, token_vocab(tok).size)
    ref = mask_logits(logits, [0, 2], guides)
    half = logits.bfloat16()
    got = mask_logits(half, [0, 2], guides)
    assert torch.equal(torch.isinf(got), torch.isinf(ref)) and torch.isinf(ref[[0, 2]]).any()
    assert torch.equal(got[1], half[1]) and not torch.isinf(half).any()


def test_warm_up_builds_the_compiler_once_in_the_background(tiny):
    from llama3.structured.compiler import _compilers, warm_up

    tok = Llama.load(tiny.path("3.1", "meta"), max_seq_len=64, max_batch_size=1).tokenizer
    assert tok not in _compilers
    t = warm_up(tok)
    early = compiler_for(tok)  # asked while (or after) the warm-up builds: waits, no second build
    t.join(timeout=60)
    assert not t.is_alive() and compiler_for(tok) is early and _compilers[tok] is early


def test_a_compile_error_names_the_request_field_it_came_from(llm):
    c = compiler_for(llm.tokenizer)
    bad = {"type": "array", "uniqueItems": True}
    with pytest.raises(InvalidRequestError) as e:
        c.compile(GuidedDecoding(json_schema=bad, param="guided_json"))
    assert e.value.param == "guided_json" and "uniqueItems" in str(e.value)
    with pytest.raises(InvalidRequestError) as e:
        c.compile(GuidedDecoding(json_schema=bad))
    assert e.value.param == "response_format"
