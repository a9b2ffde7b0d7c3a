"""Which projections are quantized, how, and when: one `QuantSpec` ("int8", "int4", "int4-g64",
…) applied layer by layer while a model loads, so no float copy of the whole model ever exists.

Every layer's q/k/v projections become one product (`wqkv`), and w1/w3 another (`w13`); wo, w2
and the output head are quantized alone. The embedding table becomes int8 rows (`Int8Embedding`:
the head's own tensors when the two are tied); norms stay float (they are tiny). GGUF
Q4_0/Q4_1/Q4_K tensors become int4 group-32 layers straight from their blocks, without
requantization; every other source is quantized from its float values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint.loaded import TensorSource
from ..errors import InvalidRequestError
from . import PARTS, SCHEMES
from .gguf_blocks import block_layout, dequantize, type_name
from .int4 import Int4Linear
from .int8 import Int8Embedding, Int8Linear, quantize_rows

#: projections that read the same input, run as one product: (parent attribute, fused name)
FUSED = (("attention", ("wq", "wk", "wv"), "wqkv"), ("feed_forward", ("w1", "w3"), "w13"))
SINGLE = (("attention", "wo"), ("feed_forward", "w2"))

QuantLinear = Int8Linear | Int4Linear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group: int | None = None  # int4 only

    @classmethod
    def parse(cls, text: str) -> QuantSpec:
        if text not in SCHEMES:
            raise InvalidRequestError(
                f"unknown quantization {text!r}", f"use one of: {', '.join(SCHEMES)}", "quantize"
            )
        if text == "int8":
            return cls(8)
        return cls(4, int(text.split("-g")[1]) if "-g" in text else 32)

    @property
    def head(self) -> QuantSpec:
        """The output head's scheme: int8 under int4 too. It sets every logit (llama.cpp's Q4
        mixes likewise keep it at 6 bits or more)."""
        return QuantSpec(8)

    @property
    def name(self) -> str:
        return "int8" if self.bits == 8 else f"int4-g{self.group}"

    def from_float(self, weights: Sequence[torch.Tensor]) -> QuantLinear:
        w = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0]
        if self.bits == 8:
            return Int8Linear.from_float(w)
        return Int4Linear.from_float(w.float(), self.group or 32)

    def from_tensors(self, parts: dict[str, torch.Tensor]) -> QuantLinear:
        """Rebuild a layer from what `QuantLinear.tensors()` saved."""
        if self.bits == 8:
            return Int8Linear(parts["codes"], parts["scale"])
        return Int4Linear(parts["codes"], parts["scale"], parts["zero"], self.group or 32)

    def tensor_shapes(self, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        """The shapes `tensors()` has for an (out, in) projection."""
        if self.bits == 8:
            return {"codes": (out_features, in_features), "scale": (out_features,)}
        groups = (out_features, in_features // (self.group or 32))
        return {"codes": (out_features, in_features // 2), "scale": groups, "zero": groups}


def concat(layers: Sequence[QuantLinear], spec: QuantSpec) -> QuantLinear:
    """One layer whose outputs are those of `layers` in order (their rows stacked)."""
    if len(layers) == 1:
        return layers[0]
    parts = [m.tensors() for m in layers]
    return spec.from_tensors({k: torch.cat([p[k] for p in parts]) for k in parts[0]})


def check_device(spec: QuantSpec, device: torch.device) -> None:
    """int8 runs everywhere (natively on CPU, compiled on GPUs); int4 only on CPU."""
    if device.type != "cpu" and spec.bits != 8:
        raise InvalidRequestError(
            f"--quantize {spec.name} runs on CPU only (the model is on {device})",
            "use --quantize int8 on a GPU, or no --quantize (bfloat16)",
            "quantize",
        )


def quantize_layer(layer: nn.Module, spec: QuantSpec, ready: dict[str, QuantLinear]) -> None:
    """Replace a block's projections in place; `ready` holds those already built from their
    source blocks, by "attention.wq"-style name (the rest are float modules on the layer)."""
    for parent_name, names, fused in FUSED:
        parent = getattr(layer, parent_name)
        mods = [ready.get(f"{parent_name}.{n}") for n in names]
        if f"{parent_name}.{fused}" in ready:
            q = ready[f"{parent_name}.{fused}"]
        elif all(m is not None for m in mods):
            q = concat(mods, spec)  # type: ignore[arg-type]
        else:
            q = spec.from_float([getattr(parent, n).weight for n in names])
        setattr(parent, fused, q)
        for n in names:
            if hasattr(parent, n):
                delattr(parent, n)
    for parent_name, name in SINGLE:
        parent = getattr(layer, parent_name)
        q = ready.get(f"{parent_name}.{name}")
        setattr(
            parent, name, q if q is not None else spec.from_float([getattr(parent, name).weight])
        )
    layer.attention.bf16_prompts = True  # where its products' prompts are (bf16_rows)


def quantize_head(model: nn.Module, spec: QuantSpec, ready: QuantLinear | None = None) -> None:
    model.output = ready if ready is not None else spec.head.from_float([model.output.weight])


def quantize_embedding(model: nn.Module, own: Int8Embedding | None = None) -> None:
    """int8 embedding rows: a tied int8 head's tensors where it has them (held once), else `own`
    (already quantized while loading) or the float table quantized now."""
    head = model.output
    if model.params.tie_word_embeddings and isinstance(getattr(head, "codes", None), torch.Tensor):
        model.tok_embeddings = Int8Embedding(head.codes, head.scale, model.dtype)
    elif own is not None:
        own.out_dtype = model.dtype
        model.tok_embeddings = own
    elif not isinstance(model.tok_embeddings, Int8Embedding):
        model.tok_embeddings = Int8Embedding.from_float(model.tok_embeddings.weight)


def quantize_model(model: nn.Module, scheme: str | QuantSpec) -> nn.Module:
    """Quantize an already-built float model in place (loading does it layer by layer instead)."""
    spec = scheme if isinstance(scheme, QuantSpec) else QuantSpec.parse(scheme)
    check_device(spec, model.device)
    for layer in model.layers:
        quantize_layer(layer, spec, {})
    quantize_head(model, spec)
    quantize_embedding(model)
    model._native_decode = None  # its layers changed: decide the decode path again
    return model


def saved_shapes(
    float_shapes: dict[str, tuple[int, ...]], spec: QuantSpec
) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a quantized checkpoint, from the float model's, in the same
    order (a layer's tensors stay together): every projection's `.weight` is replaced by its
    quantized parts, q/k/v and w1/w3 fused. A tied head is stored quantized under `output.*`."""
    shapes = dict(float_shapes)
    shapes.setdefault("output.weight", float_shapes["tok_embeddings.weight"])
    groups: dict[str, list[str]] = {}  # target module -> the float weights it replaces
    for name in shapes:
        module = name.removesuffix(".weight")
        if not _is_projection(module):
            continue
        parent, _, leaf = module.rpartition(".")
        fused = next((f for p, ns, f in FUSED if parent.endswith(p) and leaf in ns), None)
        groups.setdefault(f"{parent}.{fused}" if fused else module, []).append(name)
    first = {names[0]: target for target, names in groups.items()}
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if name in first:
            parts = [shapes[n] for n in groups[first[name]]]
            rows, cols = sum(p[0] for p in parts), parts[0][1]
            target = first[name]
            scheme = spec.head if target == "output" else spec
            out.update({f"{target}.{k}": s for k, s in scheme.tensor_shapes(rows, cols).items()})
        elif not _is_projection(name.removesuffix(".weight")):
            out[name] = shape
    return out


#: embedding rows dequantized at a time from a GGUF file's blocks
_TABLE_CHUNK = 4096


def _int8_table(source: TensorSource, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The token table as int8 rows (`quantize_rows`). A GGUF table is dequantized a few thousand
    rows at a time from its blocks: the whole float32 table was the load's peak (113 MB of
    SmolLM2's, 2.1 GB of an 8B model's). Rows are quantized one by one, so it is the same table."""
    if source.read_raw is None or source.ggml_type is None or len(source.shape) != 2:
        return quantize_rows(source.load(torch.float32).to(device))
    rows, cols = source.shape
    block, type_size = block_layout(source.ggml_type)
    row_bytes = cols // block * type_size
    raw = source.read_raw()
    codes = torch.empty(rows, cols, dtype=torch.int8, device=device)
    scale = torch.empty(rows, dtype=torch.float32, device=device)
    for lo in range(0, rows, _TABLE_CHUNK):
        hi = min(rows, lo + _TABLE_CHUNK)
        part = dequantize(raw[lo * row_bytes : hi * row_bytes], source.ggml_type, (hi - lo, cols))
        codes[lo:hi], scale[lo:hi] = quantize_rows(part.to(device))
    return codes, scale


class LoadQuantizer:
    """Quantizes while `build_model` loads, so a layer's float weights die with the layer.

    `take(name, source)` claims tensors that never need a float copy: GGUF Q4 blocks (for int4
    group 32) and the parts of an already-quantized checkpoint. `layer_loaded` / `head_loaded`
    build the quantized modules once their tensors are all read.
    """

    def __init__(self, spec: QuantSpec, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)  # where tensors it claims are built
        #: built layers and saved parts, by module name ("layers.3.attention.wq", "output")
        self._ready: dict[str, QuantLinear] = {}
        self._parts: dict[str, dict[str, torch.Tensor]] = {}
        self._warned = False
        self._embedding: Int8Embedding | None = None

    def take(self, name: str, source: TensorSource) -> bool:
        if name == "tok_embeddings.weight":  # quantized now: the float table never lives on
            self._embedding = Int8Embedding(*_int8_table(source, self.device), torch.float32)
            return True
        module, _, leaf = name.rpartition(".")
        if leaf in PARTS:
            part = source.load(torch.float32).to(self.device)
            self._parts.setdefault(module, {})[leaf] = part
            return True
        if self.spec.bits != 4 or source.ggml_type is None:
            return False
        if self.spec.group != 32:
            self._warn_requantizing(source.ggml_type)
            return False
        if leaf != "weight" or not _is_projection(module) or module == "output":
            return False  # (the head is int8: see QuantSpec.head)
        raw = source.read_raw() if source.read_raw is not None else source.raw
        layer = Int4Linear.from_gguf(raw, source.ggml_type, source.shape)
        if layer is not None:
            self._ready[module] = layer
        return layer is not None

    def _warn_requantizing(self, ggml_type: int) -> None:
        if type_name(ggml_type) in ("Q4_0", "Q4_1", "Q4_K") and not self._warned:
            self._warned = True
            log.warning(
                "requantizing 4-bit GGUF blocks to %s compounds two roundings (SmolLM2 Q4_1: "
                "perplexity +39 %%); --quantize int4 (group 32) runs the file's blocks as they are",
                self.spec.name,
            )

    def _collect(self, prefix: str) -> dict[str, QuantLinear]:
        for module in [m for m in self._parts if m.startswith(prefix)]:
            scheme = self.spec.head if module == "output" else self.spec
            self._ready[module] = scheme.from_tensors(self._parts.pop(module))
        found = [m for m in self._ready if m.startswith(prefix)]
        return {m[len(prefix) :]: self._ready.pop(m) for m in found}

    def layer_loaded(self, model: nn.Module, index: int) -> None:
        quantize_layer(model.layers[index], self.spec, self._collect(f"layers.{index}."))

    def head_loaded(self, model: nn.Module) -> None:
        head = self._collect("output").get("")
        emb, self._embedding = self._embedding, None
        if head is None and model.params.tie_word_embeddings and emb is not None:
            head = Int8Linear(emb.codes, emb.scale)  # the tied head: the same rows
        quantize_head(model, self.spec, head)
        quantize_embedding(model, emb)


def _is_projection(module: str) -> bool:
    """ "layers.3.attention.wq" or "output": a weight this module quantizes."""
    if module == "output":
        return True
    parts = module.split(".")
    if len(parts) != 4 or parts[0] != "layers":
        return False
    parent, name = parts[2], parts[3]
    return any(parent == p and name in ns for p, ns, _ in FUSED) or (parent, name) in SINGLE
