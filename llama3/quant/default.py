"""What a load runs as when the caller names no `quantize`: the default, and its reason in one line.

- A GGUF whose projections are quantized runs quantized, as llama.cpp runs it: all of them Q4_0 /
  Q4_1 / Q4_K → int4 group 32, straight from the file's blocks (the same bits, no requantization);
  any other quantized type among them (Q8_0, Q5_K, Q6_K, a Q4_K_M mix, ...) → int8, the nearest
  scheme with native kernels (8 bits hold every one of those blocks' values within half a step of
  the row's scale).
- A float checkpoint loads as float unless its float copy would not fit in the memory available:
  then int8 (int4 when even int8 would not fit), so a load never swaps the machine or OOMs.
- `"none"` is the float path, exactly; a named scheme is used as asked. Under tensor parallelism
  and on GPUs the defaults stay float (quantize there on request).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from ..checkpoint.loaded import LoadedCheckpoint
from ..errors import ConfigError
from ..utils.device import available_memory
from .apply import _is_projection
from .gguf_blocks import type_name

NONE = "none"
#: GGUF types whose blocks are int4 group 32 as they are (`Int4Linear.from_gguf`)
INT4_BLOCKS = frozenset({"Q4_0", "Q4_1", "Q4_K"})
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
#: share of the available memory the weights may take; the rest is the KV cache and the process
WEIGHTS_MEMORY_FRACTION = 0.8


@dataclass(frozen=True)
class LoadChoice:
    #: "int8", "int4", ... or None for float weights
    scheme: str | None
    #: one line for the load message and `llama3 inspect`
    reason: str


def projection_types(ckpt: LoadedCheckpoint) -> Counter[str]:
    """GGUF type names of the decoder projections (not the head or the embedding)."""
    out: Counter[str] = Counter()
    for name, src in ckpt.tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module != "output" and _is_projection(module):
            if src.ggml_type is not None:
                out[type_name(src.ggml_type)] += 1
    return out


def _types(counts: Counter[str]) -> str:
    return "/".join(sorted(counts))


def choose(
    ckpt: LoadedCheckpoint,
    requested: str | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    tensor_parallel: bool = False,
    auto: bool = True,
    free_bytes: int | None = None,
) -> LoadChoice:
    """The scheme this load uses. `auto=False` keeps float weights unless asked (Meta's
    `Llama.build`); `free_bytes` overrides the measured available memory (tests)."""
    if requested not in (None, NONE):
        from .apply import QuantSpec

        requested = QuantSpec.parse(requested).name  # "int4" is "int4-g32"
    if ckpt.quantization is not None:
        name = ckpt.quantization.name
        if requested is not None and requested != name:
            raise ConfigError(
                f"{ckpt.path} holds {name} weights, not "
                + ("float ones" if requested == NONE else requested),
                f"drop --quantize or pass --quantize {name}"
                + (" (or load the float checkpoint it came from)" if requested == NONE else ""),
            )
        return LoadChoice(name, f"{name}: a `llama3 quantize` checkpoint loads as it was saved")
    if requested == NONE:
        return LoadChoice(None, f"{_dtype(dtype)} weights (--quantize none)")
    if requested is not None:
        return LoadChoice(requested, f"{requested} weights (--quantize {requested})")
    if not auto:
        return LoadChoice(None, f"{_dtype(dtype)} weights, as stored")
    if tensor_parallel or device.type != "cpu":
        where = "under tensor parallelism" if tensor_parallel else f"on {device.type}"
        return LoadChoice(None, f"{_dtype(dtype)} weights {where} (--quantize int8 to quantize)")
    quantized = Counter({t: n for t, n in projection_types(ckpt).items() if t not in FLOAT_TYPES})
    if quantized:
        if set(quantized) <= INT4_BLOCKS:
            return LoadChoice(
                "int4",
                f"int4: the file's {_types(quantized)} blocks run as they are "
                "(--quantize none for float32)",
            )
        return LoadChoice(
            "int8",
            f"int8: the file's {_types(quantized)} blocks run as int8, the nearest native scheme "
            "(--quantize none for float32)",
        )
    return _fit(ckpt, dtype, free_bytes if free_bytes is not None else available_memory(device))


def _fit(ckpt: LoadedCheckpoint, dtype: torch.dtype, free: int) -> LoadChoice:
    params = sum(math.prod(t.shape) for t in ckpt.tensors.values())
    need = params * torch.empty((), dtype=dtype).element_size()
    budget = int(free * WEIGHTS_MEMORY_FRACTION)
    if need <= budget:
        return LoadChoice(None, f"{_dtype(dtype)} weights, as stored")
    gib = f"{need / 2**30:.1f} GiB of {_dtype(dtype)} would not fit in {free / 2**30:.1f} GiB free"
    for scheme, per_param in (("int8", 1.0), ("int4", 0.75)):  # int4: codes + group scales
        if params * per_param <= budget:
            return LoadChoice(scheme, f"{scheme}: {gib} (--quantize none to insist on float)")
    raise ConfigError(
        f"{ckpt.path.name} needs {params * 0.75 / 2**30:.1f} GiB even as int4 and "
        f"{free / 2**30:.1f} GiB is free",
        "free memory, use a smaller model, or run it across machines with torchrun",
    )


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
