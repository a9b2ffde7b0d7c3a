"""The training forward: full sequences through the model's own modules, under autograd.

`Transformer.forward` runs under `inference_mode` and may take the native decode kernel; this
walks the same modules with grad enabled instead. Native kernels step aside by themselves wherever
autograd must follow a tensor (`kernels.native_elementwise`, `bf16_rows.applies`), and frozen
int8/int4 products give an input gradient (`quant.backward`).

Masking: rows are right-padded, so a plain causal mask already keeps every real token off the pads
(which come after it); pads carry label -100. Packed rows (several examples in one) get a
block-diagonal causal mask from their segment ids and positions that restart per example, so no
token attends across an example boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..model.rope import rope_cos_sin
from ..model.transformer import Transformer

IGNORE = -100


class SegmentAttention:
    """Stands in for a KV cache in `Attention.forward`: causal attention within each segment.
    `segments` (bsz, seqlen): equal ids attend to each other (causally), others never."""

    def __init__(self, segments: torch.Tensor) -> None:
        same = segments[:, :, None] == segments[:, None, :]
        causal = torch.ones(segments.shape[1], segments.shape[1], dtype=torch.bool).tril()
        self.mask = (same & causal.to(segments.device))[:, None]  # (bsz, 1, q, k)

    def attend(self, layer_id, start_pos, q, k, v) -> torch.Tensor:
        k, v = k.to(q.dtype), v.to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.mask, enable_gqa=q.shape[1] != k.shape[1]
        )


def hidden_states(
    model: Transformer,
    tokens: torch.Tensor,
    positions: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    checkpointing: bool = False,
) -> torch.Tensor:
    """The final hidden states (before the norm and head) of `tokens` (bsz, seqlen)."""
    if positions is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
    cos, sin = rope_cos_sin(model.inv_freq(tokens.device), positions)
    attn = SegmentAttention(segments) if segments is not None else None
    h = model._embed(tokens)
    for layer in model.layers:
        if checkpointing and torch.is_grad_enabled():
            # recomputed in the backward; dropout replays the same masks (the RNG is restored)
            h = checkpoint(layer, h, cos, sin, 0, attn, use_reentrant=False)
        else:
            h = layer(h, cos, sin, 0, attn)
    return h


def loss_sum(
    model: Transformer,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    positions: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    checkpointing: bool = False,
) -> tuple[torch.Tensor, int]:
    """(sum of the next-token cross-entropy over labelled positions, their count).

    `labels` align with `tokens` (label i is token i, predicted from tokens < i), as in
    transformers; -100 marks positions without loss. Only labelled positions go through the
    output head, which on a large vocabulary is most of a small model's work.
    """
    h = hidden_states(model, tokens, positions, segments, checkpointing)
    target = labels[:, 1:]
    keep = target != IGNORE
    n = int(keep.sum())
    if n == 0:
        return h.sum() * 0.0, 0
    rows, target = h[:, :-1][keep], target[keep]
    if any(p.requires_grad for p in _head_parameters(model)):  # a trained head: plain autograd
        return _head_loss(model, rows, target), n
    if not (torch.is_grad_enabled() and rows.requires_grad):  # eval: chunks, no gradient
        with torch.no_grad():
            step = _chunk_rows(model)
            parts = [_head_loss(model, rows[s : s + step], target[s : s + step]) for s in
                     range(0, len(rows), step)]  # fmt: skip
        return torch.stack(parts).sum(), n
    return _ChunkedHeadLoss.apply(rows, target, model), n


#: logits held at once at most (floats, 128 MiB): the head and its loss run over chunks of rows,
#: each chunk's gradient taken in the forward, so no (rows x vocab) logits, softmax or gradient
#: of a long batch ever exists (a 128k vocabulary's would be 0.5 MiB a token, three times).
#: Large enough that a typical batch of a small model is one chunk: each chunk is a separate
#: pass over the head's weights, and smaller chunks made SmolLM2's step 15 % slower
LOGIT_ELEMENTS = 1 << 25


def _chunk_rows(model: Transformer) -> int:
    return max(1, LOGIT_ELEMENTS // model.vocab_size)


def _head_parameters(model: Transformer):
    yield from model.norm.parameters()
    yield from model.output.parameters()


def _head_loss(model: Transformer, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = model._head(rows.unsqueeze(0))[0].float()
    return F.cross_entropy(logits, target, reduction="sum")


class _ChunkedHeadLoss(torch.autograd.Function):
    """Sum of the cross-entropy of the frozen head over `rows` (n, dim): the gradient w.r.t. the
    rows is computed chunk by chunk in the forward (the head's own backward, quantized or tied
    heads too) and only scaled in the backward. Same FLOPs as plain autograd, far less memory."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, target: torch.Tensor, model: Transformer):
        step = _chunk_rows(model)
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        grad = torch.empty_like(rows)
        for s in range(0, rows.shape[0], step):
            with torch.enable_grad():
                chunk = rows[s : s + step].detach().requires_grad_()
                loss = _head_loss(model, chunk, target[s : s + step])
                (grad[s : s + step],) = torch.autograd.grad(loss, chunk)
            total += loss.detach()
            del loss, chunk  # freed before the next chunk's logits: the allocator reuses them
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None, None
