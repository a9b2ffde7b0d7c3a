"""Build a `Transformer` from a `LoadedCheckpoint` without a second copy of the weights.

The module is created on the meta device (no memory), every checkpoint tensor's shape is checked
against it before anything is read, then tensors are materialised one at a time in the target
dtype and assigned. A failure raises before the model exists, so nothing is left half-loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..checkpoint.loaded import LoadedCheckpoint, narrowed, read_bytes
from ..errors import CheckpointError
from ..utils.memory import release_freed_memory
from .transformer import Transformer

if TYPE_CHECKING:
    from ..parallel.group import TensorParallel
    from ..parallel.plan import ShardPlan
    from ..quant.apply import LoadQuantizer


def expected_shapes(model: Transformer) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_tensors(ckpt: LoadedCheckpoint, expected: dict[str, tuple[int, ...]]) -> None:
    """Raise a CheckpointError naming the first missing, unexpected or misshapen tensor."""
    where = ckpt.path
    missing = [n for n in expected if n not in ckpt.tensors]
    if missing:
        raise CheckpointError(
            f"{where}: {len(missing)} tensor(s) missing, e.g. '{missing[0]}'",
            "the checkpoint is incomplete or has a different layer count than its config; "
            "download it again",
        )
    unexpected = [n for n in ckpt.tensors if n not in expected]
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected tensor '{unexpected[0]}' (config says {ckpt.args.n_layers} layers)",
            "the config file does not match the weights; use the config shipped with them",
        )
    for name, shape in expected.items():
        got = ckpt.tensors[name].shape
        if tuple(got) != shape:
            raise CheckpointError(
                f"{ckpt.tensors[name].origin} has shape {tuple(got)} but the config expects {shape}",
                "the config file does not match the weights; use the config shipped with them",
            )


def build_model(
    ckpt: LoadedCheckpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_bytes: Callable[[int], None] | None = None,
    quantizer: LoadQuantizer | None = None,
    tp: TensorParallel | None = None,
) -> Transformer:
    """Build the model; `on_bytes(n)` is told each tensor's size in `dtype` as it is materialised.

    With a `quantizer`, each layer is quantized as soon as its tensors are read (the quantizer
    may claim tensors it builds without a float copy), so peak memory is the quantized model plus
    one float layer. With `tp` (a tensor-parallel run), only this rank's shard is read and built.
    """
    plan = None
    if tp is not None:
        ckpt, plan = _shard(ckpt, tp)
    args = ckpt.args
    with torch.device("meta"):
        model = Transformer(args, shard=plan)
    expected = expected_shapes(model)
    if args.tie_word_embeddings:
        expected.pop("output.weight")
    if ckpt.quantization is not None:
        from ..quant.apply import saved_shapes

        if quantizer is None:
            raise CheckpointError(
                f"{ckpt.path} holds {ckpt.quantization.name} weights",
                f"load it with --quantize {ckpt.quantization.name} (or quantize='...')",
            )
        expected = saved_shapes(expected, ckpt.quantization)
    check_tensors(ckpt, expected)

    on_cpu = torch.device(device).type == "cpu"
    names = list(expected)
    for pos, name in enumerate(names):
        src = ckpt.tensors[name]
        try:
            if quantizer is None or not quantizer.take(name, src):
                tensor = src.load(dtype).to(device)
                _assign(model, name, tensor)
            if on_bytes is not None:
                on_bytes(read_bytes(src, dtype))
        except CheckpointError:
            raise
        except Exception as e:  # a short read inside a mapped file surfaces here
            raise CheckpointError(
                f"cannot read tensor {src.origin}: {type(e).__name__}: {e}",
                "the file is truncated or corrupt; download it again",
            ) from None
        layer = _layer_of(name)
        last = pos + 1 == len(names) or layer != _layer_of(names[pos + 1])
        if quantizer is not None and layer is not None and last:
            quantizer.layer_loaded(model, layer)
        if on_cpu:
            release_freed_memory()  # each converted tensor's buffers
    if args.tie_word_embeddings and ckpt.quantization is None:
        model.tie_weights()
    if quantizer is not None:
        quantizer.head_loaded(model)
    if ckpt.rope_freq_factors is not None:
        model.rope_freq_factors = ckpt.rope_freq_factors.to(device)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # check_tensors makes this unreachable; never hand out a half-built model
        raise CheckpointError(f"{ckpt.path}: tensor {left[0]} was never loaded", "report this bug")
    model.requires_grad_(False)
    if tp is not None:
        model.attach_tp(tp)
    return model.eval()


def _shard(ckpt: LoadedCheckpoint, tp: TensorParallel) -> tuple[LoadedCheckpoint, ShardPlan]:
    """`ckpt` as this rank sees it: checked whole against its config, then every split tensor
    replaced by a source of this rank's rows or columns (read alone where the format allows)."""
    from ..parallel.plan import ShardPlan

    if ckpt.quantization is not None:
        raise CheckpointError(
            f"{ckpt.path} holds {ckpt.quantization.name} weights, which are not split across "
            "tensor-parallel ranks yet",
            f"run the float checkpoint it came from with --quantize {ckpt.quantization.name}: "
            "each rank quantizes its own shard while loading",
        )
    with torch.device("meta"):
        whole = Transformer(ckpt.args)
    expected = expected_shapes(whole)
    if ckpt.args.tie_word_embeddings:
        expected.pop("output.weight")
    check_tensors(ckpt, expected)
    plan = ShardPlan.make(ckpt.args, tp.rank, tp.world)
    tensors = {}
    for name, src in ckpt.tensors.items():
        cut = plan.cut(name)
        tensors[name] = src if cut is None else narrowed(src, *cut)
    tp.plan = plan
    return dataclasses.replace(ckpt, args=plan.local_args(ckpt.args), tensors=tensors), plan


def _assign(model: Transformer, name: str, tensor: torch.Tensor) -> None:
    module, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(module), leaf, nn.Parameter(tensor, requires_grad=False))


def _layer_of(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("layers.") else None
