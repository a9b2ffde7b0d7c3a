"""Device and dtype choice, and how much memory is free for the KV cache.

On CPU we compute in float32: CPUs without bf16 units (AVX2-class) run bf16 matmuls several times
slower than float32. On CUDA we use bfloat16 where supported, else float16.
"""

from __future__ import annotations

import torch

from ..errors import InvalidRequestError
from .memory import proc_kib_field

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidRequestError(
            f"unknown device '{device}'", "use cpu, cuda or cuda:N", param="device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(
            "device 'cuda' was asked for but CUDA is not available",
            "use --device cpu",
            param="device",
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise InvalidRequestError(
            f"unknown dtype '{dtype}'", "use float32, bfloat16 or float16", param="dtype"
        )
    return _DTYPES[key]


def available_memory(device: torch.device) -> int:
    """Bytes that could still be allocated on `device` (MemAvailable on CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = proc_kib_field("/proc/meminfo", "MemAvailable")
    return available if available is not None else 8 << 30
