"""Putting LoRA modules into a built `Transformer`, finding them again, and merging them.

Adapters are named by the Meta module they adapt ("layers.3.attention.wq"), whatever wraps it:
on a float model each projection is its own `Linear` (wrapped by `LoRALinear`); on a quantized
one q/k/v and w1/w3 are fused products (`wqkv`, `w13`: wrapped once by `LoRAFused`, which adds
each projection's update to its slice of the fused output).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelArgs
from ..errors import InvalidRequestError, UnsupportedFormatError
from ..model.transformer import Transformer
from .config import PROJECTIONS, LoRAConfig
from .layers import LoRA, LoRAFused, LoRALinear

#: fused product -> the projections it holds, in row order
_FUSED = {"wqkv": ("wq", "wk", "wv"), "w13": ("w1", "w3")}
_FUSED_OF = {p: f for f, ps in _FUSED.items() for p in ps}


def _rows(a: ModelArgs, proj: str) -> int:
    return {
        "wq": a.n_heads * a.head_dim,
        "wk": a.kv_heads * a.head_dim,
        "wv": a.kv_heads * a.head_dim,
        "wo": a.dim,
        "w1": a.hidden_dim,
        "w2": a.dim,
        "w3": a.hidden_dim,
    }[proj]


def _in_features(a: ModelArgs, proj: str) -> int:
    return {"wo": a.n_heads * a.head_dim, "w2": a.hidden_dim}.get(proj, a.dim)


def projection_shape(args: ModelArgs, module: str) -> tuple[int, int]:
    """(out, in) of the Meta projection `module` ("layers.3.attention.wq")."""
    proj = module.rsplit(".", 1)[1]
    return _rows(args, proj), _in_features(args, proj)


def attach(
    model: Transformer,
    config: LoRAConfig,
    modules: dict[str, tuple[int, float]] | None = None,
) -> dict[str, LoRA]:
    """Add fresh LoRA modules (A random, B zero: the model's output is unchanged) for
    `modules` (Meta name -> (rank, alpha); default: what `config` targets) and freeze the rest.
    Returns the new modules by name; their parameters are the only trainable ones."""
    if model.tp is not None:
        raise UnsupportedFormatError(
            "LoRA adapters do not run on a tensor-parallel model yet", "run in one process"
        )
    if adapters(model):
        raise InvalidRequestError(
            "this model already has a LoRA adapter", "load the base model again for another"
        )
    if modules is None:
        modules = config.modules(model.n_layers)
    if not modules:
        raise InvalidRequestError(
            "the LoRA config adapts no projection of this model",
            "check --target (and layers_to_transform / target_modules in adapter_config.json)",
        )
    model.requires_grad_(False)
    device = model.device
    made: dict[str, LoRA] = {}
    for name, (r, alpha) in modules.items():
        _, i, parent_name, proj = name.split(".")
        if int(i) >= model.n_layers:
            raise InvalidRequestError(
                f"the adapter has weights for {name} but the model has {model.n_layers} layers",
                "use the adapter with the model it was trained on",
            )
        out_f, in_f = projection_shape(model.params, name)
        lora = LoRA(in_f, out_f, r, config.scale(r, alpha), config.dropout).to(device)
        parent = getattr(model.layers[int(i)], parent_name)
        fused = _FUSED_OF.get(proj)
        if getattr(parent, proj, None) is not None and not isinstance(
            getattr(parent, proj), LoRALinear
        ):
            setattr(parent, proj, LoRALinear(getattr(parent, proj), lora))
        elif fused is not None and getattr(parent, fused, None) is not None:
            wrapper = getattr(parent, fused)
            if not isinstance(wrapper, LoRAFused):
                sizes = {p: _rows(model.params, p) for p in _FUSED[fused]}
                wrapper = LoRAFused(wrapper, sizes)
                setattr(parent, fused, wrapper)
            wrapper.loras[proj] = lora
        else:  # pragma: no cover - every Transformer has one of the two
            raise InvalidRequestError(f"the model has no projection {name}", "report this bug")
        made[name] = lora
    # the wrapped layers are modules to call now, not tensors for the native decode kernel
    model._native_decode = None
    model._native_weights = None
    return made


def adapters(model: nn.Module) -> dict[str, LoRA]:
    """Every LoRA module in `model`, by the Meta name of the projection it adapts."""
    out: dict[str, LoRA] = {}
    for path, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[path] = m.lora
        elif isinstance(m, LoRAFused):
            parent = path.rsplit(".", 1)[0]
            for proj, lora in m.adapters().items():
                out[f"{parent}.{proj}"] = lora
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _order(name: str) -> tuple[int, int]:
    _, i, _, proj = name.split(".")
    return int(i), list(PROJECTIONS).index(proj)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices, in a fixed order (A then B per module, modules in layer order)."""
    return [p for lora in adapters(model).values() for p in (lora.A, lora.B)]


def detach(model: Transformer) -> Transformer:
    """Remove every adapter: the model is its base again (whose tensors were never changed)."""
    for path, m in list(model.named_modules()):
        if isinstance(m, LoRALinear | LoRAFused):
            parent_path, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent_path), leaf, m.base)
    model._native_decode = None
    model._native_weights = None
    return model


@torch.no_grad()
def merge(model: Transformer) -> Transformer:
    """Fold every adapter into its float base weight (W += scale * B @ A) and drop the wrappers.
    Quantized bases cannot take the sum without a new rounding: run those unmerged."""
    for path, m in list(model.named_modules()):
        if not isinstance(m, LoRALinear | LoRAFused):
            continue
        weight = getattr(m.base, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise UnsupportedFormatError(
                f"{path} is quantized: an adapter cannot be merged into int8/int4 weights",
                "run the adapter unmerged (--adapter), or merge into the float model",
            )
        # a new tensor, not `+=`: the loaded weight may be a read-only mapping of the file
        merged = weight + m.lora.delta_weight().to(weight.device, weight.dtype)
        m.base.weight = nn.Parameter(merged, requires_grad=False)
        parent_path, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent_path), leaf, m.base)
    model._native_decode = None
    return model
