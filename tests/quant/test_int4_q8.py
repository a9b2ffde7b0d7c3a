"""The AVX2 build's group-32 int4 product (activations on an int8 grid per 32-element block, as
llama.cpp's Q4_1 x Q8_1 dot product): its error is bounded by that grid, it really runs where
`kernels.int4_q8()` says so (`LLAMA3_INT4_Q8=1`, opt-in; by default every row keeps its int16
grid), and a tiny int4 model's greedy tokens agree with the int16 path wherever that path is not
near a tie (the real SmolLM2 Q4_1's KL divergence to its float model is measured in
BENCHMARKS.md). On CPUs with AVX-512 VNNI, where the switch does nothing, the kernel runs in
test_kernels.py's AVX2 rerun of this file.

The kernel reads the switch once per process: the opt-in runs in a subprocess (this file as a
script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llama3 import kernels
from llama3.quant.int4 import Int4Linear

#: top-2 gaps (nats) the int8-block grid cannot close: its log-probs moved by up to 0.075 from
#: the int16 path's on this model, so a gap over twice that keeps its argmax
MARGIN = 0.2


def product_errors() -> dict[str, float]:
    """Worst error of group-32 kernel products (even and odd group counts, 1 to 7 rows) relative
    to each bound: half a step of every 32-block's int8 grid times |w|, and of the row's int16
    grid; <= 1 means within it."""
    torch.manual_seed(0)
    worst = {"int8_blocks": 0.0, "int16_row": 0.0}
    for k in (320, 352):  # 10 groups, and 11 (an odd last group)
        lin = Int4Linear.from_float(torch.randn(72, k) * torch.rand(72, 1) * 2, 32)
        w = lin.dequantize()
        for m in (1, 4, 7):
            x = torch.randn(m, k) * torch.rand(m, k).pow(4) * 3  # blocks of unequal ranges
            err = (lin(x) - F.linear(x, w)).abs()
            blocks = x.reshape(m, -1, 32).abs().amax(-1, keepdim=True) / 127 / 2
            int8_half = blocks.expand(-1, -1, 32).reshape(m, k) @ w.abs().t()
            int16_half = x.abs().amax(-1, keepdim=True) / 32767 / 2 * w.abs().sum(1)
            rounding = x.abs() @ w.abs().t()
            for name, bound in (
                ("int8_blocks", int8_half + 1e-5 * rounding),
                ("int16_row", int16_half + 1e-6 * rounding),
            ):
                worst[name] = max(worst[name], (err / bound).max().item())
    return worst


def decode_logprobs(path: str) -> torch.Tensor:
    """A tiny int4 (group 32) model's log-probs after each of 48 fixed tokens, one native decode
    step each."""
    from llama3 import Llama
    from llama3.model.kv_cache import KVCache

    llm = Llama.load(path, max_seq_len=64, quantize="int4")
    model, tokens = llm.model, list(range(1000, 1048))
    cache = KVCache(model.params, 1, len(tokens))
    with torch.inference_mode():
        rows = [model(torch.tensor([[t]]), i, cache)[0, -1] for i, t in enumerate(tokens)]
    assert model.native_steps == len(tokens)
    return torch.log_softmax(torch.stack(rows).float(), -1)


@pytest.fixture(scope="module")
def opt_in(tiny, tmp_path_factory) -> tuple[dict, torch.Tensor]:
    """This file as a script with `LLAMA3_INT4_Q8=1`: its products' errors and decode log-probs."""
    assert kernels.available(), kernels.unavailable_reason()
    path, out = tiny.path("3.1", "gguf"), tmp_path_factory.mktemp("opt_in") / "logp.pt"
    env = {**os.environ, "LLAMA3_INT4_Q8": "1"}
    done = subprocess.run(
        [sys.executable, __file__, str(path), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1]), torch.load(out)


def test_products_stay_on_the_grid_the_build_uses():
    assert kernels.available(), kernels.unavailable_reason()
    worst = product_errors()
    assert worst["int8_blocks"] <= 1
    if kernels.int4_q8():  # the int8 grid really runs: its error is far past the int16 grid's
        assert worst["int16_row"] > 10
    else:
        assert worst["int16_row"] <= 1


def test_the_opt_in_takes_the_int8_grid_where_the_build_has_it(opt_in):
    worst, q8 = opt_in[0], opt_in[0]["q8"]
    assert q8 == ("VNNI" not in kernels.isa())
    assert worst["int8_blocks"] <= 1
    if q8:  # the int8 grid really runs: its error is far past the int16 grid's
        assert worst["int16_row"] > 10
    else:
        assert worst["int16_row"] <= 1


def test_greedy_tokens_agree_with_the_int16_path_away_from_ties(tiny, opt_in):
    ref, q8 = decode_logprobs(str(tiny.path("3.1", "gguf"))), opt_in[1]
    top2 = ref.topk(2, -1).values
    clear = top2[:, 0] - top2[:, 1] > MARGIN
    assert clear.sum() >= len(ref) // 4  # a random-weight model: many near-ties
    assert torch.equal(q8.argmax(-1)[clear], ref.argmax(-1)[clear])
    if not opt_in[0]["q8"]:
        torch.testing.assert_close(q8, ref, rtol=0, atol=1e-3)


if __name__ == "__main__":  # the opt-in's subprocess
    torch.save(decode_logprobs(sys.argv[1]), sys.argv[2])
    print(json.dumps(product_errors() | {"q8": kernels.int4_q8()}))
