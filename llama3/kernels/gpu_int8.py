"""One-row products with int8 weights on a GPU, as a Triton kernel (`llama3::int8_row_product`).

A decode step at batch 1 multiplies one activation row by every weight matrix: it is a matrix-
vector product bound by the weights' bytes. Inductor's reductions over int8 codes read them at
1.1-2.7 TB/s on an H200 where bfloat16 products reach 3.4-4.3 (BENCHMARKS.md, GPU), so int8 was
barely faster than bfloat16 (1.04x); with this kernel an 8B model decodes 1.37-1.49x faster in
int8. It streams the codes in wide tiles, each program owning `BLOCK_N` output rows and walking
the input in `BLOCK_K` steps; it accumulates float32 products in registers and reduces once at
the end, then applies the row scales. Codes become floats either by a plain conversion or from
their bits (`BITS`, `int8_triton.codes_to_float`: GPUs convert integers at a quarter of their
arithmetic rate, and at HBM speed that rate is the limit).

The tile shape is chosen per (rows, inputs) from measurements (`CONFIGS_BY_SHAPE`, from
`bench/gpu_decode.py --sweep`), else `default_config`. The op is a `torch.library.triton_op`,
so torch.compile traces into it and CUDA graphs capture it. Without Triton or off CUDA,
`available` is False and callers keep their PyTorch path; tests run the kernel on the CPU through
Triton's interpreter (`TRITON_INTERPRET=1`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Config:
    """A tile shape and launch setting of the kernel."""

    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1
    bits: bool = True  # codes to floats by integer operations, not a conversion

    def __str__(self) -> str:
        return (
            f"n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}"
            f"{'b' if self.bits else 'c'}"
        )


#: the best tile per (out_features, in_features): Llama-3-8B's products on an H200
#: (`bench/gpu_decode.py --sweep`, BENCHMARKS.md run G4; the sweep replaces them with its own)
CONFIGS_BY_SHAPE: dict[tuple[int, int], Config] = {
    (4096, 4096): Config(2, 512, num_warps=2),  # wo
    (6144, 4096): Config(4, 512, num_warps=2, num_stages=3),  # fused wq/wk/wv
    (4096, 14336): Config(2, 2048, num_warps=4),  # w2
    (28672, 4096): Config(16, 512, num_warps=8, num_stages=3),  # fused w1/w3
    (128256, 4096): Config(4, 512, num_warps=2, num_stages=3),  # the head
}


def default_config(n: int, k: int) -> Config:
    """Other shapes, by the same sweep's trends: long rows want long tiles, many rows tall ones."""
    if k >= 8192:
        return Config(2, 2048, num_warps=4)
    if 16384 <= n < 65536:
        return Config(16, 512, num_warps=8, num_stages=3)
    return Config(4, 512, num_warps=2, num_stages=3)


def config_for(n: int, k: int) -> Config:
    return CONFIGS_BY_SHAPE.get((n, k)) or default_config(n, k)


#: Triton installed and not turned off (`LLAMA3_TRITON_INT8=0`); read once, so compiled code
#: sees plain constants
ENABLED = (
    os.environ.get("LLAMA3_TRITON_INT8", "1") != "0"
    and importlib.util.find_spec("triton") is not None
)
#: Triton's interpreter runs kernels on the CPU (slowly): how tests check the kernel without a GPU
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_registered = False


def available(x: torch.Tensor) -> bool:
    """Whether the kernel can run on x's device (CUDA with Triton; the CPU under the interpreter)."""
    return ENABLED and (x.device.type == "cuda" or (INTERPRETED and x.device.type == "cpu"))


def _kernel():
    from . import int8_triton

    return int8_triton.int8_rows


def launch(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, config: Config, wrap=None
) -> torch.Tensor:
    """x (1, in) @ (codes * scale[:, None]).T -> (1, out) in x's dtype, with one tile setting."""
    n, k = codes.shape
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    kernel = _kernel() if wrap is None else wrap(_kernel())
    grid = ((n + config.block_n - 1) // config.block_n,)
    kernel[grid](
        x,
        codes,
        scale,
        y,
        n,
        k,
        codes.stride(0),
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        BITS=config.bits,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return y


def register() -> None:
    """Define the torch op `llama3::int8_row_product` (once; it imports Triton). Done at import
    where CUDA is present, so compiled code never has to."""
    global _registered
    if _registered:
        return
    from torch.library import triton_op, wrap_triton

    @triton_op("llama3::int8_row_product", mutates_args=())
    def int8_row_product(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return launch(x, codes, scale, config_for(*codes.shape), wrap=wrap_triton)

    _registered = True


def row_product(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One activation row (any leading shape of one element) times int8 weights with row scales,
    in x's dtype; eager or compiled."""
    if codes.stride(1) != 1:
        raise ValueError("int8 codes must be contiguous along their input dimension")
    y = torch.ops.llama3.int8_row_product(x.reshape(1, -1).contiguous(), codes, scale)
    return y.reshape(*x.shape[:-1], codes.shape[0])


if ENABLED and torch.cuda.is_available():
    try:
        register()
    except Exception as e:  # an old PyTorch or a broken Triton: keep the PyTorch path
        logging.getLogger(__name__).warning("int8 GPU kernel off (%s: %s)", type(e).__name__, e)
        ENABLED = False
