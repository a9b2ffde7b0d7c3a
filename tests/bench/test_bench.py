"""`llama3 bench`: every engine measured in its own process on the same tiny GGUF, weights counted
the same way by us and by transformers, a missing peer reported instead of crashing the run."""

from __future__ import annotations

import json
import subprocess
import sys

from llama3.bench.hf import TransformersEngine
from llama3.bench.llamacpp import gguf_weight_bytes
from llama3.bench.ours import OursEngine
from llama3.bench.report import render


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama3", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bench_measures_every_engine(tiny):
    path = tiny.path("3.1", "gguf")
    small = ["--prompt-tokens", "24", "--new-tokens", "4", "--batch", "1,2", "--runs", "2"]
    out = _bench(str(path), "--engines", "llama3,llama.cpp", "--threads", "1", *small, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["read_bandwidth_bytes_s"] > 1e8 and report["threads"] == 1
    by = {r["engine"]: r for r in report["results"]}
    ours = by["llama3"]
    assert "error" not in ours, ours
    assert ours["prefill_tok_s"]["runs"] == 2
    assert 0 < ours["prefill_tok_s"]["min"] <= ours["prefill_tok_s"]["median"]
    assert ours["prefill_tok_s"]["median"] <= ours["prefill_tok_s"]["max"]
    assert set(ours["decode_tok_s"]) == {"1", "2"}
    assert ours["ttft_ms"]["median"] > 0 and ours["peak_rss_bytes"] > 50e6
    assert ours["read_bandwidth_bytes_s"] > 1e8  # its working set's read speed, for its bound
    # the F32 file holds our float32 weights plus llama.cpp's rope_freqs table (head_dim / 2)
    assert gguf_weight_bytes(path) == ours["weight_bytes"] + 16 // 2 * 4
    text = render(report)
    assert "decode b2 tok/s" in text and "bandwidth bound tok/s" in text
    assert "working-set read GB/s" in text
    if _has_llama_cpp():
        assert "error" not in by["llama.cpp"], by["llama.cpp"]
        assert by["llama.cpp"]["weight_bytes"] == gguf_weight_bytes(path)
        assert "llama3 / llama.cpp" in text
    else:
        assert "pip install llama-cpp-python" in by["llama.cpp"]["error"]
        assert "llama.cpp: not measured: llama-cpp-python is not installed" in text


def test_transformers_engine_reads_the_same_weights(tiny):
    # in-process on the Hugging Face directory: transformers' own GGUF reader takes ~40 s here
    path = tiny.path("3.1", "hf")
    theirs = TransformersEngine(path)
    ours = OursEngine(path, max_seq_len=64, max_batch=2)
    assert theirs.weight_bytes == ours.weight_bytes  # their parameters, our module walk
    prompts = [[128000, 791, 1404], [128000, 40, 1093]]
    for engine in (theirs, ours):
        ttft, rest = engine.decode(prompts, 4)
        assert ttft > 0 and rest > 0
        assert engine.prefill(prompts[0]) > 0


def test_bench_bad_input_is_one_line(tiny):
    path = str(tiny.path("3.0", "gguf"))
    bad = _bench(path, "--engines", "vllm")
    assert bad.returncode == 2
    assert "unknown engine vllm" in bad.stderr and "Traceback" not in bad.stderr
    bad = _bench(path, "--new-tokens", "1")
    assert bad.returncode == 2 and "--new-tokens" in bad.stderr
    bad = _bench(path, "--batch", "0")
    assert bad.returncode == 2 and "batch sizes must be 1 or more" in bad.stderr
