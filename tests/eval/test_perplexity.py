"""Perplexity with a sliding window against transformers' loss on the same weights and windows,
KL divergence against a reference, and the `llama3 perplexity` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from llama3 import Llama
from llama3.eval.perplexity import perplexity, windows

TEXT = (
    "The llama is a domesticated South American camelid. Llamas are social animals and live "
    "with others as a herd. Their wool is soft and contains only a small amount of lanolin. "
) * 6


@pytest.mark.parametrize(("n", "ctx", "stride"), [(10, 4, 2), (11, 4, 4), (100, 32, 7), (5, 8, 3)])
def test_windows_score_every_token_once(n, ctx, stride):
    plan = windows(n, ctx, stride)
    scored = [p for b, e, f in plan for p in range(f, e)]
    assert scored == sorted(set(scored)) and scored[-1] == n - 1
    assert all(e - b <= ctx and b < f for b, e, f in plan)
    if stride < ctx:
        assert scored == list(range(1, n))
    else:  # window starts have no context: skipped, as in Hugging Face's recipe
        assert scored == [p for p in range(1, n) if p % stride]


def hf_sliding_nll(hf, ids: list[int], ctx: int, stride: int) -> float:
    """Hugging Face's documented recipe: labels -100 on the context part of each window."""
    x = torch.tensor([ids])
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + ctx, len(ids))
        target_len = end - prev_end
        chunk = x[:, begin:end]
        labels = chunk.clone()
        labels[:, : chunk.shape[1] - target_len] = -100
        with torch.no_grad():
            logits = hf(chunk).logits.float()
        lp = torch.log_softmax(logits[0, :-1], -1)
        tgt = labels[0, 1:]
        mask = tgt != -100
        total -= lp[mask].gather(1, tgt[mask][:, None]).sum().item()
        count += int(mask.sum())
        prev_end = end
        if end == len(ids):
            break
    return total / count


def test_matches_transformers_loss(tiny):
    llm = Llama.load(tiny.path("3.1", "hf"), max_seq_len=128)
    hf = tiny.hf_model("3.1")
    ids = llm.tokenizer.encode_prompt(TEXT)
    assert len(ids) > 100
    for ctx, stride in ((len(ids), len(ids)), (64, 32), (48, 48)):
        r = perplexity(llm.model, ids, ctx=ctx, stride=stride)
        assert r.tokens_scored == sum(e - f for _, e, f in windows(len(ids), ctx, stride))
        assert r.nll == pytest.approx(hf_sliding_nll(hf, ids, ctx, stride), abs=1e-4)


def test_kl_against_itself_is_zero(tiny):
    llm = Llama.load(tiny.path("3.2", "hf"), max_seq_len=128)
    ids = llm.tokenizer.encode_prompt(TEXT)[:80]
    r = perplexity(llm.model, ids, ctx=40, stride=20, reference=llm.model)
    assert r.kl_divergence == pytest.approx(0.0, abs=1e-6) and r.top1_agreement == 1.0


def test_command_with_int8_and_a_reference(tiny, tmp_path):
    path = tiny.path("3.1", "hf")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    cmd = [sys.executable, "-m", "llama3", "perplexity", str(path), "--text", str(text)]
    base = subprocess.run(cmd + ["--ctx", "64", "--json"], capture_output=True, text=True)
    assert base.returncode == 0, base.stderr
    got = json.loads(base.stdout)
    llm = Llama.load(path, max_seq_len=128)
    want = perplexity(llm.model, llm.tokenizer.encode_prompt(TEXT), ctx=64, stride=32)
    assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-5)
    q = subprocess.run(
        cmd + ["--ctx", "64", "--quantize", "int8", "--kl-divergence-base", str(path)],
        capture_output=True,
        text=True,
    )
    assert q.returncode == 0, q.stderr
    assert "KL(" in q.stdout and "top-1 agreement" in q.stdout
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "none.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such text file" in bad.stderr
