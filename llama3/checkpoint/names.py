"""The one name map between Meta's parameter names and Hugging Face / GGUF names, and the q/k row
permutation that Hugging Face applies.

Meta's RoPE rotates adjacent pairs of each head's dims; Hugging Face's rotates the two halves. HF's
conversion script therefore permutes the rows of wq and wk; we undo it so one model serves both.
llama.cpp's converter applies the inverse permutation to HF weights, so GGUF files already hold
Meta's layout and need no change.
"""

from __future__ import annotations

import re

import torch

# Meta name suffix inside `layers.N.` for each HF and GGUF layer suffix.
_HF_LAYER = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_HF_TOP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER = {
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_GGUF_TOP = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
# Tensors that carry no weights of ours (rotary tables some converters store).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rope.freqs")

_HF_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_GGUF_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_to_meta(name: str) -> str | None:
    """Meta name for an HF tensor name, or None for a tensor we do not use."""
    if name in _HF_TOP:
        return _HF_TOP[name]
    m = _HF_RE.match(name)
    if m and m.group(2) in _HF_LAYER:
        return f"layers.{m.group(1)}.{_HF_LAYER[m.group(2)]}"
    return None


def gguf_to_meta(name: str) -> str | None:
    if name in _GGUF_TOP:
        return _GGUF_TOP[name]
    m = _GGUF_RE.match(name)
    if m and m.group(2) in _GGUF_LAYER:
        return f"layers.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}"
    return None


def unpermute_hf_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo HF's rotate-half row permutation of a q or k projection (rows = n_heads * head_dim)."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_meta_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta layout -> HF layout (the inverse of `unpermute_hf_qk`), for writing HF checkpoints."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


# Meta model-parallel split dims (SEEDS §1.5): column-parallel on dim 0, row-parallel on the last dim.
_COLUMN = re.compile(
    r"(^output|^tok_embeddings|feed_forward\.(w1|w3)|attention\.(wq|wk|wv))\.weight$"
)
_ROW = re.compile(r"(feed_forward\.w2|attention\.wo)\.weight$")


def shard_dim(name: str) -> int | None:
    """The dim a Meta model-parallel checkpoint splits `name` along; None = replicated."""
    if _COLUMN.search(name):
        return 0
    if _ROW.search(name):
        return -1
    return None
