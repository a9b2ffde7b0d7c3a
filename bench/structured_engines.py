"""Compare grammar engines for structured output on our own tokenizers (CPU).

For xgrammar, llguidance and outlines-core, over the SmolLM2 GGUF vocabulary (49k) and the Llama 3
tiktoken vocabulary (128k), each built from our `BaseTokenizer` through `token_vocab`: the time to
build the engine's tokenizer info, to compile a JSON schema (first compile, nothing cached), and
to compute one token mask, walking a valid instance token by token (mask, then accept). Also
whether the engine takes our tokenizers at all (token bytes only, no HF tokenizer object).

    python bench/structured_engines.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch

from llama3.registry import default_model_path
from llama3.structured.vocab import TokenVocab, token_vocab
from llama3.tokenizer import load_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
        },
        "score": {"type": "number"},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
INSTANCE = {
    "name": "Ada Lovelace",
    "age": 36,
    "role": "admin",
    "tags": ["math", "poetry", "engines"],
    "address": {"city": "London", "zip": "W1"},
    "score": 99.5,
}
TEXT = json.dumps(INSTANCE, separators=(",", ":"))


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def bench_xgrammar(v: TokenVocab, walk: list[int], encode) -> dict:
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(
        list(v.token_bytes), vocab_size=v.size, stop_token_ids=list(v.stop_ids)
    )
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    setup = ms(t0)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(
        json.dumps(SCHEMA), any_whitespace=False, separators=(",", ":")
    )
    compile_ms = ms(t0)
    m = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, v.size)
    times = []
    for tok in walk:
        t0 = time.perf_counter()
        m.fill_next_token_bitmask(mask)
        times.append(ms(t0))
        assert m.accept_token(tok), tok
    return {"setup_ms": setup, "compile_ms": compile_ms, "mask_ms": times}


def bench_llguidance(v: TokenVocab, walk: list[int], encode) -> dict:
    import llguidance
    import llguidance.torch as llt

    class Wrapped:  # the duck-typed tokenizer llguidance's TokenizerWrapper reads
        eos_token_id = v.stop_ids[0]
        bos_token_id = None
        tokens = list(v.token_bytes)
        special_token_ids = sorted(v.special_ids)

        def __call__(self, s: str) -> list[int]:  # re-tokenizes text the grammar forces
            return encode(s)

    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer(
        llguidance.TokenizerWrapper(Wrapped()), n_vocab=v.size, eos_token=list(v.stop_ids)
    )
    setup = ms(t0)
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    m = llguidance.LLMatcher(tok, grammar, log_level=0)
    err = m.get_error()
    compile_ms = ms(t0)
    if err:
        raise RuntimeError(err)
    mask = llt.allocate_token_bitmask(1, v.size)
    times = []
    for t in walk:
        t0 = time.perf_counter()
        llt.fill_next_token_bitmask(m, mask, 0)
        times.append(ms(t0))
        assert m.consume_token(t), (t, m.get_error())
    return {"setup_ms": setup, "compile_ms": compile_ms, "mask_ms": times}


def bench_outlines(v: TokenVocab, walk: list[int], encode) -> dict:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema
    from outlines_core.kernels.torch import allocate_token_bitmask, fill_next_token_bitmask

    t0 = time.perf_counter()
    by_bytes: dict[bytes, list[int]] = {}
    for i, b in enumerate(v.token_bytes):
        if b and i not in v.special_ids and i != v.stop_ids[0]:
            by_bytes.setdefault(b, []).append(i)
    vocab = outlines_core.Vocabulary(v.stop_ids[0], by_bytes)
    setup = ms(t0)
    t0 = time.perf_counter()
    regex = build_regex_from_schema(json.dumps(SCHEMA), r"")
    index = outlines_core.Index(regex, vocab)
    compile_ms = ms(t0)
    guide = outlines_core.Guide(index)
    mask = allocate_token_bitmask(v.size)
    times = []
    for t in walk:
        t0 = time.perf_counter()
        fill_next_token_bitmask(guide, mask)
        times.append(ms(t0))
        guide.advance(t)
    return {"setup_ms": setup, "compile_ms": compile_ms, "mask_ms": times}


#: keywords none of the three can enforce: an engine should refuse them, not ignore them
UNENFORCEABLE = {
    "not": {"not": {"type": "string"}},
    "if/then": {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}},
    "uniqueItems": {"type": "array", "uniqueItems": True},
    "dependentRequired": {"type": "object", "dependentRequired": {"a": ["b"]}},
    "unevaluatedProperties": {"type": "object", "unevaluatedProperties": False},
}


def refuses(engine: str, v: TokenVocab, schema: dict) -> bool:
    """Whether `engine` rejects `schema` (True) or compiles it anyway (False)."""
    text = json.dumps(schema)
    try:
        if engine == "xgrammar":
            import xgrammar as xgr

            info = xgr.TokenizerInfo(list(v.token_bytes), vocab_size=v.size)
            xgr.GrammarCompiler(info).compile_json_schema(text)
        elif engine == "llguidance":
            import llguidance

            err = llguidance.LLMatcher.validate_grammar(
                llguidance.LLMatcher.grammar_from_json_schema(text)
            )
            return bool(err)
        else:
            from outlines_core.json_schema import build_regex_from_schema

            build_regex_from_schema(text)
    except Exception:
        return True
    return False


ENGINES = {
    "xgrammar": bench_xgrammar,
    "llguidance": bench_llguidance,
    "outlines-core": bench_outlines,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine (median reported)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tokenizers = {
        "SmolLM2 (GGUF, 49k)": load_tokenizer(default_model_path()),
        "Llama 3 (tiktoken, 128k)": load_tokenizer("llama3/assets/tokenizer.model"),
    }
    print(f"schema walk: {TEXT}")
    print(
        "| tokenizer | engine | tokenizer info (ms) | schema compile (ms) | mask/token median (ms) |"
        " mask/token p95 (ms) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for tname, tk in tokenizers.items():
        v = token_vocab(tk)
        walk = tk.encode(TEXT, bos=False, eos=False)
        for ename, fn in ENGINES.items():
            runs = []
            for _ in range(args.repeat):
                try:
                    runs.append(fn(v, walk, functools.partial(tk.encode, bos=False, eos=False)))
                except Exception as e:  # an engine that cannot take our tokenizer: say so
                    print(f"| {tname} | {ename} | failed: {type(e).__name__}: {e} | | | |")
                    break
            if len(runs) != args.repeat:
                continue
            setup = statistics.median(r["setup_ms"] for r in runs)
            comp = statistics.median(r["compile_ms"] for r in runs)
            masks = sorted(t for r in runs for t in r["mask_ms"])
            p95 = masks[int(0.95 * (len(masks) - 1))]
            print(
                f"| {tname} | {ename} | {setup:.0f} | {comp:.1f} | "
                f"{statistics.median(masks):.3f} | {p95:.3f} |"
            )
    v = token_vocab(tokenizers["SmolLM2 (GGUF, 49k)"])
    print("\n| keyword | " + " | ".join(ENGINES) + " |")
    print("|---|" + "---|" * len(ENGINES))
    for kw, schema in UNENFORCEABLE.items():
        cells = ["refused" if refuses(e, v, schema) else "**ignored**" for e in ENGINES]
        print(f"| `{kw}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
