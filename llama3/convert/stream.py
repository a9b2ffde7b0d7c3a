"""One tensor at a time out of the source: read (only the slice a shard needs, where the format
allows), cast, and afterwards hand the memory back (source pages and freed heap)."""

from __future__ import annotations

import torch

from ..checkpoint.loaded import narrowed
from ..errors import CheckpointError
from ..utils.memory import release_freed_memory
from .pages import drop_mapped_pages
from .source import Source


def load_tensor(
    source: Source, name: str, dtype: torch.dtype, cut: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """`name` (rows/columns `cut` = (dim, start, stop) of it) in `dtype`, contiguous, and never a
    view of a larger storage (torch.save would write all of that storage)."""
    src = source.ckpt.tensors[name]
    if cut is not None:
        src = narrowed(src, *cut)
    try:
        t = src.load(dtype)
    except CheckpointError:
        raise
    except Exception as e:  # a short read inside a mapped file surfaces here
        raise CheckpointError(
            f"cannot read tensor {src.origin}: {type(e).__name__}: {e}",
            "the source file is truncated or corrupt",
        ) from None
    if t.dtype != dtype:
        t = t.to(dtype)
    if tuple(t.shape) != tuple(src.shape):
        raise CheckpointError(
            f"{src.origin} loaded with shape {tuple(t.shape)}, expected {tuple(src.shape)}",
            "the source file is corrupt",
        )
    t = t.contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def release(source: Source) -> None:
    """Drop the source's resident mapped pages and return freed heap to the system."""
    drop_mapped_pages(source.mapped_files)
    release_freed_memory()
