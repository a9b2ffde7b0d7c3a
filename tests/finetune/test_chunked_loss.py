"""The head's loss over chunks of rows (gradient taken in the forward) equals plain autograd
through one (rows x vocab) cross-entropy: the loss and every LoRA gradient, float and int4 base."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama3.finetune import forward
from llama3.finetune.forward import IGNORE, hidden_states, loss_sum
from llama3.lora import LoRAConfig, attach, trainable_parameters

from .helpers import load_tiny


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_chunked_head_loss_equals_plain_autograd(tiny, monkeypatch, quantize):
    lm = load_tiny(tiny.path("3.1", "hf"), quantize=quantize)
    torch.manual_seed(0)
    for lora in attach(
        lm.model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("wq", "wv", "w2"))
    ).values():
        torch.nn.init.normal_(lora.B, 0.0, 0.05)
    params = trainable_parameters(lm.model)
    tokens = torch.randint(0, 128000, (3, 23))
    labels = tokens.clone()
    labels[0, :5] = IGNORE
    lm.model.train()

    h = hidden_states(lm.model, tokens)
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = lm.model._head(h[:, :-1][keep].unsqueeze(0))[0].float()
    want = F.cross_entropy(logits, target[keep], reduction="sum")
    want_grads = torch.autograd.grad(want, params)

    monkeypatch.setattr(forward, "LOGIT_ELEMENTS", 10 * lm.model.vocab_size)  # 7 chunks
    got, n = loss_sum(lm.model, tokens, labels)
    assert n == int(keep.sum()) == 62
    got_grads = torch.autograd.grad(got, params)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)
    for g, w in zip(got_grads, want_grads):
        # float32 sums in another order (chunks, and the CPU's own BLAS blocking): a few units
        # of 1e-6 on entries near zero, so the bound is relative to the gradient's scale
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * float(w.abs().max()))
    with torch.no_grad():  # the eval path: chunks without gradients; an int4 head runs its
        # inference kernels there (bfloat16 tiles, or the native one for few rows)
        tol = {} if quantize == "none" else {"rtol": 1e-4, "atol": 0.0}
        torch.testing.assert_close(loss_sum(lm.model, tokens, labels)[0], want.detach(), **tol)
