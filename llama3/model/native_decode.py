"""Decode steps through the native CPU kernels (`llama3_kernels::decode_layers` and
`paged_decode_layers`).

One new token per row on a CPU model whose projections are int8 or int4 with the native kernels
(what `--quantize int8|int4`, quantized checkpoints and 4-bit GGUF blocks give) and a float32
cache: the whole step is one call — the token lookup and rotation angles, per layer norm, fused
q/k/v, RoPE, cache write, attention, wo, norm, fused w1/w3, SiLU, w2, then the final norm and
the output head when that is native too — instead of about nine operator calls a layer, whose
dispatch was ~25 % of a step on a small model (and a call per layer, with its parallel regions,
~12 %). Two caches: the contiguous one of `generate`, chat and the bench (every row at one
position), and the serving engine's paged pool on steps that only decode (each row its own position
and slots). Anything else (prompt chunks, other weights, devices or dtypes) takes the module path.
"""

from __future__ import annotations

import torch

from .. import kernels
from .kv_cache import KVCache
from .paged_cache import PagedBatch


def _base(layer: object) -> object:
    """The projection the kernel multiplies by: a served adapters' wrapper (`MultiLoRA`) stands
    for its base (steps with adapter rows never come here: `usable`); anything else as it is
    (a `LoRALinear` of `--adapter` adapts every row, so it keeps the model off the kernel)."""
    return getattr(layer, "native_base", layer)


def _native_proj(layer: object) -> bool:
    """An int8 or int4 projection whose tensors the native kernels take as they are."""
    layer = _base(layer)
    # Int8Linear holds `codes` exactly when it multiplies with the native kernel
    codes = getattr(layer, "codes", None)
    if isinstance(codes, torch.Tensor):
        return codes.device.type == "cpu"
    packed = getattr(layer, "packed", None)  # Int4Linear (groups 32/64/128: all the kernel's)
    return (
        isinstance(packed, torch.Tensor)
        and packed.device.type == "cpu"
        and getattr(layer, "_native", False)
    )


def eligible(model: torch.nn.Module) -> bool:
    """Whether every layer of `model` can run as one native call (decided once per model)."""
    cached = getattr(model, "_native_decode", None)
    if cached is None:
        cached = _eligible(model)
        model._native_decode = cached
        # the layers' tensors, gathered once: looking them up through the modules every step
        # cost ~1.2 ms of a ~8 ms step
        model._native_weights = _weights(model) if cached else None
    return cached


def _eligible(model) -> bool:
    if getattr(model, "tp", None) is not None:
        return False  # one call runs every layer: no room for the all-reduces between them
    if model.device.type != "cpu" or model.dtype != torch.float32 or model.params.head_dim % 8:
        return False
    if _embedding(model.tok_embeddings) is None:
        return False
    for layer in model.layers:
        att, ff = layer.attention, layer.feed_forward
        if not all(_native_proj(m) for m in (att.wqkv, att.wo, ff.w13, ff.w2)):
            return False
        for norm in (layer.attention_norm, layer.ffn_norm):
            if norm.weight.dtype != torch.float32:
                return False
    return kernels.available()


def _embedding(module) -> list[torch.Tensor] | None:
    """The token table as the kernel takes it: int8 codes and row scales (Int8Embedding), or a
    float32 table; None for anything else."""
    codes = getattr(module, "codes", None)
    if isinstance(codes, torch.Tensor) and codes.dtype == torch.int8 and codes.is_contiguous():
        if getattr(module, "out_dtype", None) == torch.float32:
            return [codes, module.scale]
        return None
    weight = getattr(module, "weight", None)
    if isinstance(module, torch.nn.Embedding) and weight.dtype == torch.float32:
        return [weight.data] if weight.is_contiguous() else None
    return None


def usable(model, cache: object, tokens: torch.Tensor, positions: torch.Tensor) -> bool:
    """Whether this step (`tokens` at `positions`, into `cache`) takes the native path."""
    # the model first: decided once, and the only test a compiled (never eligible) model traces
    if not eligible(model) or getattr(model, "_adapter_rows", False):
        return False
    if isinstance(cache, PagedBatch):  # a flat batch (1, T): native when every row decodes
        return not cache.prefills and cache.pool.native
    return (  # (bsz, 1) rows at one position
        tokens.shape[1] == 1
        and positions.numel() == 1
        and isinstance(cache, KVCache)
        and kernels.native_attention(cache.k[0])
    )


def _parts(proj) -> list[torch.Tensor]:
    proj = _base(proj)
    if hasattr(proj, "codes"):  # int8: no zeros (the kernel ignores the third tensor)
        return [proj.codes, proj.scale, proj.scale]
    return [proj.packed, proj.scale, proj.zero]


def _weights(model) -> dict:
    """What `decode_layers` takes, gathered once: the token table (`_embedding`); each layer's
    two norms; the codes, scale and zero of its wqkv, wo, w13 and w2; and the final norm's weight
    with the output projection's tensors when that projection is native too (else nothing: the
    step ends in hidden states and the modules finish it)."""
    norms, parts = [], []
    for layer in model.layers:
        att, ff = layer.attention, layer.feed_forward
        norms += [layer.attention_norm.weight, layer.ffn_norm.weight]
        parts += [t for p in (att.wqkv, att.wo, ff.w13, ff.w2) for t in _parts(p)]
    eps = model.layers[0].attention_norm.eps
    head = []
    if _native_proj(model.output) and model.norm.eps == eps:
        head = [model.norm.weight, *_parts(model.output)]
    embedding = _embedding(model.tok_embeddings)
    return dict(embedding=embedding, norms=norms, eps=eps, proj=parts, head=head)


def decode(
    model, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache | PagedBatch
) -> tuple[torch.Tensor, bool]:
    """(logits, True) when the step also ran the final norm and the output projection, else
    (hidden states after every layer, False); shaped like the embeddings of `tokens` with the
    vocabulary or dim last: (bsz, 1, ...) for a contiguous cache, (1, T, ...) for an engine step of
    T decoding sequences. The kernel looks the tokens up and makes their rotation angles itself."""
    shape = tokens.shape
    ids = tokens.reshape(-1).long().contiguous()
    w = model._native_weights
    model.native_steps += 1
    inv_freq = model.inv_freq(tokens.device)
    if isinstance(cache, PagedBatch):
        slots, _, _, lengths = cache._plan()  # rows are the decodes in flat-batch order
        h = torch.ops.llama3_kernels.paged_decode_layers(
            ids, w["embedding"], inv_freq, positions.reshape(-1).long().contiguous(), w["norms"],
            w["eps"], w["proj"], cache.pool.k, cache.pool.v, cache.slot_mapping, slots, lengths,
            model.params.n_heads, w["head"],
        )  # fmt: skip
    else:
        h = torch.ops.llama3_kernels.decode_layers(
            ids, w["embedding"], inv_freq, w["norms"], w["eps"], w["proj"], cache.k, cache.v,
            positions.reshape(1), model.params.n_heads, w["head"],
        )  # fmt: skip
    return h.reshape(*shape, -1), bool(w["head"])
