"""Several adapters over one base model at once, each token row getting its own adapter's update
(`llama3 serve --lora name=PATH`, the engine's mixed batches).

A `LoRABank` holds the adapters by id (0 is the base: no update; ids are never reused, so a KV
block hashed under one adapter is never taken for another's). It wraps each adapted projection
(or a quantizer's fused product) in a `MultiLoRA`, which keeps every adapter's `LoRA` for that
projection. Before a forward the engine's runner says which token rows belong to which adapter
(`LoRABank.route`); each wrapper then adds, per adapter present, x[rows] @ A.T @ B.T * scale to
those rows only. On CPUs the updates are computed in float64 and rounded once: BLAS picks its
float32 kernel (and sum order) by row count, so a request's update would move with what it was
batched with (and an int8 base rounds its inputs to a grid, so a 1e-7 move can flip a step); in
float64 the row count only moves digits that the rounding to float32 drops.

Steps whose rows are all the base's keep the native int8/int4 decode kernel while adapters are
loaded: a wrapper names its base as `native_base`, which the kernel multiplies by, and `route`
marks the model (`_adapter_rows`) on steps with adapter rows only, which take the modules.
With no adapter loaded the bank removes its wrappers: the model is its plain base again (the
bfloat16 prompt path comes back too), and the runner does nothing extra.
Not thread-safe: add, remove and route from the engine's step thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import InvalidRequestError, UnsupportedFormatError
from ..model.transformer import Transformer
from .attach import _FUSED, _FUSED_OF, _rows, adapters, projection_shape
from .layers import LoRA
from .peft_io import Adapter

#: (adapter id, rows of the flattened batch; None = every row) for each adapter in a step
Groups = list[tuple[int, torch.Tensor | None]]


class MultiLoRA(nn.Module):
    """A frozen projection, or fused product whose output slices are `sizes` (projection ->
    rows, in order), plus the updates of every adapter that adapts it, by adapter id."""

    def __init__(self, base: nn.Module, bank: LoRABank, sizes: dict[str, int] | None) -> None:
        super().__init__()
        self.base = base
        self._bank = bank
        #: projection ("" when not fused) -> output columns it owns
        self.columns: dict[str, slice] = {}
        at = 0
        for proj, n in (sizes or {}).items():
            self.columns[proj] = slice(at, at + n)
            at += n
        #: adapter id -> projection -> its update (plain dict: not part of the model's state)
        self.loras: dict[int, dict[str, LoRA]] = {}

    @property
    def native_base(self) -> nn.Module:
        """What the native decode kernel multiplies by on steps without adapter rows."""
        return self.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        groups = self._bank.groups
        if groups is None or not self.loras:
            return y
        y = y.contiguous()
        x2, y2 = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        for aid, rows in groups:
            loras = self.loras.get(aid)
            if loras is None:
                continue
            xs = x2 if rows is None else x2.index_select(0, rows)
            for proj, lora in loras.items():
                out = y2 if proj == "" else y2[:, self.columns[proj]]
                delta = lora(xs).to(y.dtype)
                if rows is None:
                    out += delta
                else:  # (index_add_ costs milliseconds a call on CPU, whatever the size)
                    out.index_put_((rows,), delta, accumulate=True)
        return y


class LoRABank:
    """The adapters one model serves at once, by id; the wrappers that run them."""

    def __init__(self, model: Transformer) -> None:
        if model.tp is not None:
            raise UnsupportedFormatError(
                "LoRA adapters do not run on a tensor-parallel model yet", "run in one process"
            )
        if adapters(model):
            raise InvalidRequestError(
                "this model already runs one adapter over every request (--adapter)",
                "serve adapters by name with --lora instead of --adapter",
            )
        self.model = model
        #: this step's row groups (set by `route`); None: every row is the base's
        self.groups: Groups | None = None
        self._wrappers: dict[str, MultiLoRA] = {}  # module path -> wrapper
        self._ids: set[int] = set()
        self._next_id = 1

    @property
    def loaded(self) -> bool:
        return bool(self._ids)

    def __contains__(self, adapter_id: int) -> bool:
        return adapter_id in self._ids

    def add(self, adapter: Adapter) -> int:
        """Put `adapter` (read and checked against this model by `read_adapter`) beside the
        others; returns its new id. The base's tensors are not touched."""
        aid = self._next_id
        self._next_id += 1
        device = self.model.device
        dtype = torch.float64 if device.type == "cpu" else torch.float32  # see the module doc
        for name, (r, alpha) in adapter.modules().items():
            wrapper, proj = self._wrapper(name)
            out_f, in_f = projection_shape(self.model.params, name)
            lora = LoRA(in_f, out_f, r, adapter.config.scale(r, alpha)).requires_grad_(False)
            a, b = adapter.weights[name]
            lora.A.data = a.to(device, dtype)
            lora.B.data = b.to(device, dtype)
            wrapper.loras.setdefault(aid, {})[proj] = lora.eval()
        self._ids.add(aid)
        self._wrappers_changed()
        return aid

    def remove(self, adapter_id: int) -> None:
        """Forget an adapter (no sequence may still use it); the last one out unwraps the model."""
        self._ids.discard(adapter_id)
        for w in self._wrappers.values():
            w.loras.pop(adapter_id, None)
        if not self._ids:
            for path, w in self._wrappers.items():
                parent, _, leaf = path.rpartition(".")
                setattr(self.model.get_submodule(parent), leaf, w.base)
            self._wrappers.clear()
        self._wrappers_changed()

    @contextmanager
    def route(self, spans: Sequence[tuple[int, int]]) -> Iterator[None]:
        """Run a forward whose token rows are `spans` in order: (adapter id, row count) each."""
        by_id: dict[int, list[int]] = {}
        at = 0
        for aid, n in spans:
            if aid:
                by_id.setdefault(aid, []).extend(range(at, at + n))
            at += n
        dev = self.model.device
        self.groups = [
            (aid, None if len(rows) == at else torch.tensor(rows, dtype=torch.long, device=dev))
            for aid, rows in by_id.items()
        ] or None
        self.model._adapter_rows = self.groups is not None
        try:
            yield
        finally:
            self.groups = None
            self.model._adapter_rows = False

    def _wrapper(self, name: str) -> tuple[MultiLoRA, str]:
        """The wrapper of Meta module `name` ("layers.3.attention.wq"), made on first use, and the
        key of that projection inside it ("" unless fused)."""
        _, i, parent_name, proj = name.split(".")
        parent = getattr(self.model.layers[int(i)], parent_name)
        prefix = f"layers.{i}.{parent_name}"
        fused = _FUSED_OF.get(proj)
        if getattr(parent, proj, None) is not None:
            path, key, sizes = f"{prefix}.{proj}", "", None
        elif fused is not None and getattr(parent, fused, None) is not None:
            path, key = f"{prefix}.{fused}", proj
            sizes = {p: _rows(self.model.params, p) for p in _FUSED[fused]}
        else:  # pragma: no cover - every Transformer has one of the two
            raise InvalidRequestError(f"the model has no projection {name}", "report this bug")
        w = self._wrappers.get(path)
        if w is None:
            leaf = path.rsplit(".", 1)[1]
            w = MultiLoRA(getattr(parent, leaf), self, sizes)
            setattr(parent, leaf, w)
            self._wrappers[path] = w
        return w, key

    def _wrappers_changed(self) -> None:
        # decided again: the layers changed (the kernel sees through the wrappers to the base)
        self.model._native_decode = None
        self.model._native_weights = None
