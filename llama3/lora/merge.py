"""An adapter folded into a checkpoint's float weights, tensor by tensor (`llama3 merge`).

Each adapted projection's source is replaced by one that loads the base weight in float32, adds
scale * B @ A (Meta layout) and casts to what the writer asks for; every other tensor is copied as
the converter copies it. A GGUF's block-quantized projections are dequantized to float first (the
merged weight is a new tensor: it cannot keep the old blocks).
"""

from __future__ import annotations

from ..checkpoint.loaded import TensorSource
from ..convert.source import Source
from .peft_io import Adapter


def merge_into(source: Source, adapter: Adapter) -> None:
    """Replace `source`'s adapted weights by merged ones (nothing is read yet)."""
    for name, delta in adapter.deltas().items():
        base = source.ckpt.tensors[name]
        source.ckpt.tensors[name] = _merged(base, delta)


def _merged(base: TensorSource, delta) -> TensorSource:
    def load(dtype):
        return (base.load(delta.dtype) + delta).to(dtype)

    return TensorSource(base.shape, load, f"{base.origin} + LoRA")
