"""Per-token cost of structured output: decode tok/s with and without a JSON schema, same run.

The continuous-batching engine (what `llama3 serve` runs) decodes `--batch` sequences of SmolLM2
for `--tokens` tokens each, alternately free and constrained to a schema whose one string field
never ends (so both runs decode exactly the same number of tokens), `--rounds` times; the
medians are compared. The mask's own time (llguidance + applying it) is timed apart as well.

    python bench/structured_overhead.py [--batch 1 16] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llama3 import Llama, SamplingParams
from llama3.engine.engine import LLMEngine, default_engine_config
from llama3.registry import default_model_path
from llama3.structured import GuidedDecoding
from llama3.structured import matcher as structured_matcher

SCHEMA = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
PROMPT = "Write a long story about a lighthouse keeper, as JSON."


class MaskTimer:
    """Wraps `mask_logits` to add up the time spent in it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._inner = structured_matcher.mask_logits

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def decode_rate(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> float:
    """Generated tokens per second over the decode steps (the prefill step excluded)."""
    for p in prompts:
        engine.add_request(p, params)
    engine.step()  # prefill (and first token) of every sequence
    t0, n = time.perf_counter(), 0
    while engine.has_unfinished():
        n += len(engine.step())
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    llm = Llama.load(default_model_path(), device="cpu", max_seq_len=1024, max_batch_size=1)
    engine = LLMEngine(
        llm.model,
        llm.tokenizer,
        default_engine_config(llm.model, max_num_seqs=max(args.batch), max_model_len=1024),
    )
    ids = llm.formatter.encode_dialog_prompt([{"role": "user", "content": PROMPT}])
    timer = MaskTimer()
    structured_matcher.mask_logits = timer
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, ISA {torch.backends.cpu.get_cpu_capability()}"
    )
    print("| batch | free tok/s | schema tok/s | overhead | mask share of schema decode time |")
    print("|---:|---:|---:|---:|---:|")
    for b in args.batch:
        base = dict(temperature=1.0, top_p=1.0, max_tokens=args.tokens, ignore_eos=True)
        free = SamplingParams(seed=0, **base)
        guided = SamplingParams(seed=0, guided=GuidedDecoding(json_schema=SCHEMA), **base)
        decode_rate(engine, [ids] * b, free)  # warm-up (and the schema's compile, cached)
        decode_rate(engine, [ids] * b, guided)
        rates: dict[str, list[float]] = {"free": [], "schema": []}
        shares = []
        for _ in range(args.rounds):
            rates["free"].append(decode_rate(engine, [ids] * b, free))
            timer.seconds = 0.0
            t0 = time.perf_counter()
            rates["schema"].append(decode_rate(engine, [ids] * b, guided))
            shares.append(timer.seconds / (time.perf_counter() - t0))
        f, s = statistics.median(rates["free"]), statistics.median(rates["schema"])
        print(
            f"| {b} | {f:.1f} | {s:.1f} | {(f / s - 1) * 100:+.1f} % | {statistics.median(shares) * 100:.1f} % |"
        )


if __name__ == "__main__":
    main()
