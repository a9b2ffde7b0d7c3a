"""One rank of a tensor-parallel test run (started by torchrun or by the test with RANK etc.).

usage: tp_worker.py OUT_DIR CASES_JSON — CASES_JSON is a list of {"name", "path", "quantize"}.
For each case every rank loads its shard and writes OUT_DIR/<name>.rank<R>.json with what it saw:
full-prompt logprobs, the batched generator's tokens (lockstep: every rank runs it, as Meta's
API does), and, with rank 0 driving and the others following, the continuous-batching engine's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from llama3.engine.engine import LLMEngine
from llama3.generation.generate import generate
from llama3.generation.params import SamplingParams
from llama3.loader import load
from llama3.parallel import group
from llama3.parallel.driver import Driver, follow

PROMPTS = [[128000, 791, 6864, 315, 9822, 374], [128000, 40, 1093, 311, 1935]]


def run_case(tp, case: dict, out: Path) -> None:
    lm = load(case["path"], quantize=case.get("quantize"), tensor_parallel=tp)
    model, tok = lm.model, lm.tokenizer
    got: dict = {"rank": tp.rank, "world": tp.world}
    got["local_params"] = sum(p.numel() for p in model.parameters())
    with torch.inference_mode():
        logits = model(torch.tensor([PROMPTS[0]]))
    got["logprobs"] = torch.log_softmax(logits[0].double(), -1).tolist() if tp.rank == 0 else None
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    # no seed: each rank's own generator differs, so agreeing tokens prove rank 0's are used
    sampled = SamplingParams(temperature=1.0, max_tokens=8)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=8, seed=7)
    tp.lockstep = True
    res = generate(model, tok, PROMPTS, [greedy, sampled], max_seq_len=64)
    got["lockstep_greedy"] = res[0].tokens
    got["lockstep_unseeded"] = res[1].tokens
    got["lockstep_seeded"] = generate(model, tok, PROMPTS[:1], seeded, max_seq_len=64)[0].tokens
    tp.lockstep = False
    if tp.rank == 0:
        tp.driver = Driver(tp)
        engine = LLMEngine(model, tok)
        res = engine.generate(PROMPTS, [greedy, seeded])
        got["engine"] = [r.tokens for r in res]
        tp.driver.close()
        tp.driver = None
    else:
        follow(model, tp)
    (out / f"{case['name']}.rank{tp.rank}.json").write_text(json.dumps(got))


def main() -> None:
    out = Path(sys.argv[1])
    cases = json.loads(sys.argv[2])
    tp = group.init(device="cpu")
    for case in cases:
        run_case(tp, case, out)
    group.shutdown()


if __name__ == "__main__":
    main()
