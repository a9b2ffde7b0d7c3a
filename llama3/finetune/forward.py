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
    logits = model._head(h[:, :-1][keep].unsqueeze(0))[0].float()
    return F.cross_entropy(logits, target[keep], reduction="sum"), n
