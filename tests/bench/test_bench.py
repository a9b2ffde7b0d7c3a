"""`llama3 bench`: every engine measured in its own process on the same tiny GGUF, weights counted
the same way by us and by transformers, a missing peer reported instead of crashing the run."""

from __future__ import annotations

import json
import subprocess
import sys

from llama3.bench.llamacpp import gguf_weight_bytes
from llama3.bench.report import render
from llama3.bench.run import BenchConfig, run_bench
from llama3.checkpoint import read_checkpoint
from llama3.loader import load_tokenizer_for


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def test_bench_measures_every_engine(tiny):
    path = tiny.path("3.1", "gguf")
    cfg = BenchConfig(
        model=path,
        engines=["llama3", "transformers", "llama.cpp"],
        threads=1,
        prompt_tokens=24,
        decode_prompt_tokens=8,
        new_tokens=4,
        batches=[1, 2],
        runs=2,
    )
    report = run_bench(cfg, load_tokenizer_for(read_checkpoint(path)))
    assert report["read_bandwidth_bytes_s"] > 1e8
    by = {r["engine"]: r for r in report["results"]}
    for name in ("llama3", "transformers"):
        r = by[name]
        assert "error" not in r, r
        assert r["prefill_tok_s"]["runs"] == 2
        assert 0 < r["prefill_tok_s"]["min"] <= r["prefill_tok_s"]["median"]
        assert r["prefill_tok_s"]["median"] <= r["prefill_tok_s"]["max"]
        assert set(r["decode_tok_s"]) == {"1", "2"}
        assert r["ttft_ms"]["median"] > 0 and r["peak_rss_bytes"] > 50e6
    # the same float32 weights, counted by our module walk and by transformers' parameters
    assert by["llama3"]["weight_bytes"] == by["transformers"]["weight_bytes"]
    # the F32 file holds those weights plus llama.cpp's rope_freqs table (head_dim / 2 floats)
    assert gguf_weight_bytes(path) == by["llama3"]["weight_bytes"] + 16 // 2 * 4
    if _has_llama_cpp():
        assert "error" not in by["llama.cpp"], by["llama.cpp"]
    else:
        assert "pip install llama-cpp-python" in by["llama.cpp"]["error"]
    text = render(report)
    assert "decode b2 tok/s" in text and "bandwidth bound tok/s" in text
    assert "llama3 / transformers" in text


def test_bench_cli_json_and_bad_input(tiny):
    path = tiny.path("3.0", "gguf")
    cmd = [sys.executable, "-m", "llama3", "bench", str(path), "--engines", "llama3"]
    small = ["--prompt-tokens", "16", "--new-tokens", "3", "--batch", "1", "--runs", "1"]
    out = subprocess.run([*cmd, *small, "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["engine"] for r in report["results"]] == ["llama3"]
    assert report["results"][0]["decode_tok_s"]["1"]["runs"] == 1

    bad = subprocess.run([*cmd[:-1], "vllm"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "unknown engine vllm" in bad.stderr and "Traceback" not in bad.stderr
