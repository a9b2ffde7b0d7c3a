"""The continuous-batching engine's own cost per step, as a share of the step.

Runs `LLMEngine` in-process on the default model (no flags: SmolLM2 Q4_1 as int4) with N
concurrent requests (unique ~100-token prompts, 128 new tokens each, temperature 0 or sampled)
and times every step twice: the whole `step()` and the model's forward inside it. The difference
is the engine's Python: scheduling, block tables, the runner's batch tensors, sampling, stop
checks and incremental detokenizing. Steps that only decode are reported apart from steps that
carry prompt chunks. The HTTP side (request parsing, SSE writes) runs on the server's event loop
thread and is not in these figures.

    python bench/engine_overhead.py [--seqs 1,16,64] [--temperature 0.7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_bench import make_prompts  # noqa: E402


def run(llm, n: int, temperature: float, new_tokens: int, seed: int) -> dict:
    from llama3 import SamplingParams
    from llama3.engine.engine import LLMEngine, default_engine_config
    from llama3.tokenizer import chat_formatter

    # the default pool (a share of free memory): all n sequences run at once, none preempted
    cfg = default_engine_config(llm.model, max_num_seqs=max(n, 1))
    engine = LLMEngine(llm.model, llm.tokenizer, cfg)
    fmt = chat_formatter(llm.tokenizer)
    warm = fmt.encode_dialog_prompt([{"role": "user", "content": "Hi"}])
    engine.generate([warm], SamplingParams(temperature=temperature, max_tokens=4))  # lazy inits
    # serve_bench's prompts (--prompt-words 75: about 100 tokens each), so the two line up
    for i, prompt in enumerate(make_prompts(n, random.Random(seed), 75)):
        msgs = [{"role": "user", "content": prompt}]
        sp = SamplingParams(
            temperature=temperature, max_tokens=new_tokens, ignore_eos=True, seed=seed + i
        )
        engine.add_request(fmt.encode_dialog_prompt(msgs), sp)
    forward = [0.0]
    real = engine.runner.model

    def timed(*a, **kw):
        t = time.perf_counter()
        out = real(*a, **kw)
        forward[0] += time.perf_counter() - t
        return out

    engine.runner.model = timed
    decode, mixed = [], []
    while engine.has_unfinished():
        prefilling = any(s.num_uncomputed_tokens > 1 for s in engine.scheduler.running) or bool(
            engine.scheduler.waiting
        )
        forward[0] = 0.0
        t = time.perf_counter()
        engine.step()
        total = time.perf_counter() - t
        (mixed if prefilling else decode).append((total, forward[0]))
    engine.runner.model = real

    def summary(steps):
        if not steps:
            return None
        tot = [s[0] for s in steps]
        own = [s[0] - s[1] for s in steps]
        return {
            "steps": len(steps),
            "step_ms_median": round(statistics.median(tot) * 1e3, 3),
            "engine_ms_median": round(statistics.median(own) * 1e3, 3),
            "engine_share": round(sum(own) / sum(tot), 4),
        }

    return {
        "seqs": n,
        "temperature": temperature,
        "decode": summary(decode),
        "prefill": summary(mixed),
    }


def main(argv: list[str] | None = None) -> int:
    from llama3 import Llama
    from llama3.registry import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--seqs", default="1,16,64")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    llm = Llama.load(args.model or default_model_path())
    rows = [
        run(llm, int(n), args.temperature, args.new_tokens, args.seed) for n in args.seqs.split(",")
    ]
    print(f"{llm.loaded.weights_note}; {args.threads} threads, temperature {args.temperature}")
    print("seqs  kind     steps  step ms  engine ms  engine share")
    for r in rows:
        for kind in ("decode", "prefill"):
            s = r[kind]
            if s:
                print(
                    f"{r['seqs']:>4}  {kind:<7} {s['steps']:>6} {s['step_ms_median']:>8.2f} "
                    f"{s['engine_ms_median']:>10.2f}  {100 * s['engine_share']:>10.1f} %"
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
