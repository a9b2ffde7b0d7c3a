"""Decode speed with sampling against greedy: the default model (int8, 2 threads) streaming 128
tokens with Meta's defaults (temperature 0.6, top-p 0.9, seeded) and greedily, interleaved, median
of `--runs`. With `--baseline REF` it also samples with `llama3/generation/sampling.py` as it was
at git revision REF (the same generation loop around it), to measure a change to the sampler.

    python bench/sampled_decode.py --baseline 6eae207

BENCHMARKS.md quotes its output.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llama3.generation.sampling as sampling  # noqa: E402
import llama3.generation.sequence_state as sequence_state  # noqa: E402
from llama3 import Llama  # noqa: E402
from llama3.generation.params import SamplingParams  # noqa: E402
from llama3.registry import default_model_path  # noqa: E402


def sampler_at(ref: str) -> types.ModuleType:
    """`llama3.generation.sampling` as it was at git revision `ref`."""
    src = subprocess.run(
        ["git", "show", f"{ref}:llama3/generation/sampling.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"sampling_at_{ref}")
    module.__dict__["__package__"] = "llama3.generation"
    exec(compile(src, f"sampling@{ref}", "exec"), module.__dict__)
    return module


def stream_rate(
    llm: Llama,
    prompt: list[int],
    params: SamplingParams,
    sampler: types.ModuleType | None = None,
) -> float:
    """Tokens per second of one `Llama.stream` generation after its first token, drawn with
    `sampler` (a `sampler_at` module) in place of the current sampling module when given."""
    sequence_state.sampling = sampler or sampling
    try:
        stamps = []
        t0 = time.perf_counter()
        for _ in llm.stream([prompt], params):
            stamps.append(time.perf_counter() - t0)
    finally:
        sequence_state.sampling = sampling
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the built-in model")
    ap.add_argument("--quantize", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", default=None, metavar="REF")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    llm = Llama.load(a.model or default_model_path(), quantize=a.quantize or None)
    prompt = llm.tokenizer.encode("Tell me a long story about a dragon.", bos=True, eos=False)
    greedy = SamplingParams(max_tokens=a.new_tokens, temperature=0.0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=a.new_tokens, seed=0, ignore_eos=True)

    samplers = {"sampled": sampling}
    if a.baseline:
        samplers[f"sampled@{a.baseline}"] = sampler_at(a.baseline)
    stream_rate(llm, prompt, greedy)  # warm-up
    rates: dict[str, list[float]] = {"greedy": [], **{k: [] for k in samplers}}
    for _ in range(a.runs):
        rates["greedy"].append(stream_rate(llm, prompt, greedy))
        for name, module in samplers.items():
            rates[name].append(stream_rate(llm, prompt, sampled, module))
    print(f"decode tok/s, median of {a.runs} (min-max), vocabulary {llm.model.params.vocab_size}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:24s} {med:7.1f}  ({min(values):.1f}-{max(values):.1f})")
    if a.baseline:
        ratio = statistics.median(
            n / o for n, o in zip(rates["sampled"], rates[f"sampled@{a.baseline}"])
        )
        print(f"  sampled ÷ sampled@{a.baseline}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
