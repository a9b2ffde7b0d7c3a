"""The compiled decode step (torch.compile over a static cache) gives the eager model's results."""

from __future__ import annotations

import pytest
import torch

from llama3 import Llama, kernels
from llama3.generation.params import SamplingParams
from llama3.model.static_cache import window_for, windows


def test_window_buckets():
    assert windows(1000) == [256, 512, 1000]
    assert windows(100) == [100]
    assert window_for(0, 1000) == 256
    assert window_for(255, 1000) == 256
    assert window_for(256, 1000) == 512
    assert window_for(999, 1000) == 1000


@pytest.mark.parametrize(
    "attention, quantize", [("native", None), ("portable", None), ("native", "int4")]
)
def test_compiled_decode_equals_eager(tiny, attention, quantize, monkeypatch):
    if attention == "native":
        assert kernels.available(), kernels.unavailable_reason()
    else:  # the windowed, masked attention other devices and dtypes compile
        monkeypatch.setattr(kernels, "native_attention", lambda cache: False)
    path = tiny.path("3.1", "gguf")
    eager = Llama.load(path, max_seq_len=300, max_batch_size=2, quantize=quantize)
    fast = Llama.load(path, max_seq_len=300, max_batch_size=2, quantize=quantize)
    if quantize:  # int4 layers decode natively (nothing to compile); the graph is for models
        fast.model._native_decode = False  # whose layers the kernel does not take: forced here
    took = fast.compile(batch_sizes=[2])
    assert took > 0
    assert fast._decoder.cache_for(2).native == (attention == "native")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # prompts of different lengths (the shorter row generates while the longer is still forced),
    # long enough to cross from the 256-key window into the full one
    prompts = [list(range(1000, 1250)), list(range(2000, 2240))]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, logprobs=0)
    want = eager.complete(prompts, params)
    got = fast.complete(prompts, params)
    # quantized products round activations onto an int16 grid: where the compiler's fused norm
    # differs from eager in the last bit, a value can land one grid step away
    atol = 1e-4 if quantize is None else 5e-4
    for w, g in zip(want, got):
        assert g.tokens == w.tokens
        torch.testing.assert_close(
            torch.tensor(g.logprobs), torch.tensor(w.logprobs), rtol=0, atol=atol
        )
    # other prompt lengths (the token buffer's stride changes with them) reuse the warmed graphs
    fast.complete([p[:200] for p in prompts], params)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "recompiled"


def test_generate_cli_with_compile_prints_the_same_text(tiny):
    import subprocess
    import sys

    path = str(tiny.path("3.0", "gguf"))
    cmd = [sys.executable, "-m", "llama3", "generate", "Hello", "--model", path, "--quiet"]
    cmd += ["--temperature", "0", "--max-tokens", "8", "--max-seq-len", "64"]
    eager = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    fast = subprocess.run([*cmd, "--compile"], capture_output=True, text=True, timeout=600)
    assert eager.returncode == 0 and fast.returncode == 0, fast.stderr
    assert fast.stdout == eager.stdout


def test_pipelined_greedy_decode_equals_eager(tiny, monkeypatch):
    """With a compiled decoder, decoding past the prompts takes the pipelined loop (each step
    queued before the host reads the last one's tokens): same tokens, texts and finish reasons
    as the eager loop, with rows that end at different steps."""
    from llama3.generation.generate import BatchGeneration

    path = tiny.path("3.1", "gguf")
    eager = Llama.load(path, max_seq_len=128, max_batch_size=2)
    fast = Llama.load(path, max_seq_len=128, max_batch_size=2)
    fast.compile(batch_sizes=[2])
    entered = []
    real = BatchGeneration._pipelined

    def spy(self, *args):
        entered.append(args[2])  # the position it takes over at
        yield from real(self, *args)

    monkeypatch.setattr(BatchGeneration, "_pipelined", spy)
    prompts = [list(range(1000, 1030)), list(range(2000, 2021))]
    params = [
        SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=19, temperature=0.0, ignore_eos=True),
    ]
    want = eager.complete(prompts, params)
    got = fast.complete(prompts, params)
    assert entered == [29]  # once every prompt is consumed: the longer one ends at 29
    for w, g in zip(want, got):
        assert (g.tokens, g.text, g.finish_reason) == (w.tokens, w.text, w.finish_reason)
    assert [len(g.tokens) for g in got] == [7, 19]


def test_pipelined_sampling_draws_what_the_step_by_step_loop_draws(tiny, monkeypatch):
    """Sampled rows (seeded), logprobs and a repetition penalty through the pipelined loop give
    exactly what the same compiled decoder gives step by step."""
    from llama3.generation.generate import BatchGeneration

    fast = Llama.load(tiny.path("3.1", "gguf"), max_seq_len=128, max_batch_size=2)
    fast.compile(batch_sizes=[2])
    prompts = [list(range(1000, 1030)), list(range(2000, 2021))]
    common = dict(ignore_eos=True)
    params = [
        SamplingParams(max_tokens=9, temperature=0.9, top_p=0.9, seed=5, logprobs=2, **common),
        SamplingParams(
            max_tokens=17, temperature=0.7, top_k=20, repetition_penalty=1.3, seed=7, **common
        ),
    ]
    entered = []
    real = BatchGeneration._pipelined

    def spy(self, *args):
        entered.append(args[2])
        yield from real(self, *args)

    monkeypatch.setattr(BatchGeneration, "_pipelined", spy)
    piped = fast.complete(prompts, params)
    assert entered == [29]
    monkeypatch.setattr(BatchGeneration, "pipelined", False)
    stepwise = fast.complete(prompts, params)
    for a, b in zip(piped, stepwise):
        assert (a.tokens, a.text, a.finish_reason) == (b.tokens, b.text, b.finish_reason)
        assert a.logprobs == b.logprobs and a.top_logprobs == b.top_logprobs
    assert [len(r.tokens) for r in piped] == [9, 17] and entered == [29]  # not entered again
