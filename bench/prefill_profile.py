"""Where a prompt's prefill spends its time: torch.profiler's operator table for the built-in model.

Runs a random-token prompt through the model (warmed up twice), prints the prefill speed of a few
timed runs, then the profiler's per-operator totals over `--runs` profiled prefills grouped by
input shape (so each projection's GEMM and weight conversion shows on its own line). Divide the
totals by `--runs` for one prefill. BENCHMARKS.md's prefill breakdowns come from this.

    python bench/prefill_profile.py --quantize int8 --tokens 512
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from llama3 import Llama
from llama3.model.kv_cache import KVCache
from llama3.registry import default_model_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the built-in SmolLM2 GGUF")
    p.add_argument("--quantize", default="int8", help="int8, int4, none (default int8)")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="profiled prefills (default 3)")
    p.add_argument("--rows", type=int, default=25, help="operator lines shown")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    quantize = None if a.quantize == "none" else a.quantize
    llm = Llama.load(a.model or default_model_path(), quantize=quantize)
    model = llm.model
    tokens = torch.randint(0, model.params.vocab_size, (1, a.tokens))

    def prefill() -> None:
        cache = KVCache(model.params, 1, a.tokens, device=model.device, dtype=model.dtype)
        model(tokens, 0, cache, last_only=True)

    for _ in range(2):
        prefill()
    speeds = []
    for _ in range(5):
        t = time.perf_counter()
        prefill()
        speeds.append(a.tokens / (time.perf_counter() - t))
    print(f"prefill {a.tokens} tokens: {sorted(speeds)[2]:.0f} tok/s (median of 5)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(a.runs):
            prefill()
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="cpu_time_total", row_limit=a.rows, max_name_column_width=34
    )
    print(table)


if __name__ == "__main__":
    main()
