"""Int8 weights run as int8 on CPU: per-output-channel symmetric weights, activations quantized
per call (dynamic), products in PyTorch's fbgemm int8 GEMM.

On this class of CPU (AVX2 + FMA, no VNNI) fbgemm's int8 GEMM is 1.3-2.3x faster than float32 MKL
for the layer projections and 4-8x for the vocabulary projection (`bench/linear_rows.py
--int8`), and the weights take a quarter of the memory. llama.cpp computes the same way (its
activations are quantized to 8 bits for Q4/Q8 dot products). The error is measured, not assumed:
`llama3 perplexity` and the tests report KL divergence against the float model.
"""

from __future__ import annotations

import itertools
import warnings
import weakref

import torch
from torch import nn

from ..errors import InvalidRequestError

SCHEMES = ("int8",)

#: SmoothQuant's migration strength: how much of an activation channel's range moves into the
#: weights (0.5 splits it evenly; Xiao et al. 2023)
SMOOTH_ALPHA = 0.5

#: Text whose activations set the smoothing factors: prose, dialogue, code and numbers, so that
#: the channels that carry outliers on any of them are found. Not the text we evaluate on.
CALIBRATION_TEXT = """\
The committee met on Tuesday, 14 March, to review the budget for the coming year. After a long
discussion, the members agreed to raise the library's funding by 12% and to postpone the new roof.
"Are you sure this will work?" she asked. "Not at all," he replied, "but it is worth a try."
def fibonacci(n: int) -> list[int]:
    seq = [0, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])
    return seq[:n]
Photosynthesis converts light energy into chemical energy: 6 CO2 + 6 H2O -> C6H12O6 + 6 O2.
Q: What is the capital of Japan? A: Tokyo. Q: How many legs does a spider have? A: Eight.
La tour Eiffel mesure environ 330 metres. Der schnelle braune Fuchs springt ueber den faulen Hund.
"""


#: fbgemm's packed weights, by key. torch.compile cannot trace the packed-weight object itself, so
#: compiled graphs call `llama3::int8_linear` with the key, a plain int.
_PACKED: dict[int, tuple[torch.ScriptObject, int, bool]] = {}
_KEYS = itertools.count()


# Defined with `torch.library.Library` rather than `custom_op`: its Python dispatch costs ~4 us a
# call instead of ~20, and a decode step makes four such calls per layer.
_LIB = torch.library.Library("llama3", "DEF")
_LIB.define("int8_linear(Tensor x, int key) -> Tensor")


def _int8_linear(x: torch.Tensor, key: int) -> torch.Tensor:
    """fbgemm's int8 product of `x` (rows, in) with the packed weights registered under `key`."""
    packed, _, reduce_range = _PACKED[key]
    return torch.ops.quantized.linear_dynamic(x, packed, reduce_range)


def _int8_linear_shape(x: torch.Tensor, key: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], _PACKED[key][1])


_LIB.impl("int8_linear", _int8_linear, "CPU")
_LIB._register_fake("int8_linear", _int8_linear_shape)


class Int8Linear(nn.Module):
    """A bias-free linear layer holding int8 weights with one float scale per output row."""

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        reduce_range: bool = True,
        smooth: torch.Tensor | None = None,
    ) -> None:
        """`smooth` (per input channel): the weights are stored multiplied by it and the inputs
        divided by it, which moves activation outliers into the (per-row scaled) weights."""
        super().__init__()
        self.reduce_range = reduce_range
        w = weight.detach().to(torch.float32)
        self._inv_smooth = None
        if smooth is not None:
            w = w * smooth[None, :]
            self._inv_smooth = (1.0 / smooth).to(torch.float32)
        self.out_features, self.in_features = w.shape
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(torch.float64)
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # PyTorch marks quantized-tensor constructors deprecated; the fbgemm kernels behind
            # them are what we use, and the warning would otherwise reach users at every load.
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qw, None)
        self._key = next(_KEYS)
        _PACKED[self._key] = (packed, self.out_features, reduce_range)
        weakref.finalize(self, _PACKED.pop, self._key, None)
        self._anchor = torch.zeros(1, self.in_features)
        self._anchor[0, 0], self._anchor[0, -1] = 1.0, -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if self._inv_smooth is not None:
            x2 = x2 * self._inv_smooth
        # fbgemm quantizes activations with one range per call. Each row (token) is scaled to
        # max |x| = 1, so one token's outliers cannot flatten the others (KL 0.97 -> 0.03 on
        # SmolLM2's w2), and an anchor row [1, -1, 0, ...] pins the call's range to [-1, 1], so
        # a row's integers, and its result, do not depend on the rest of the batch. The product
        # is linear in each row: the scale comes back out.
        s = x2.abs().amax(dim=1, keepdim=True) + 1e-30
        xs = torch.cat([x2 / s, self._anchor])
        y = torch.ops.llama3.int8_linear(xs, self._key)[:-1] * s
        y = y.reshape(*shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def weight_nbytes(self) -> int:
        """Bytes a product reads: the int8 weights and a float32 scale per row."""
        return self.out_features * (self.in_features + 4)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    out: list[tuple[nn.Module, str]] = []
    for layer in model.layers:
        att, ff = layer.attention, layer.feed_forward
        out += [(att, n) for n in ("wq", "wk", "wv", "wo")]
        out += [(ff, n) for n in ("w1", "w2", "w3")]
    return out + [(model, "output")]


#: projections that read the same input, run as one product: (parent attribute, fused name)
_FUSED = (("attention", ("wq", "wk", "wv"), "wqkv"), ("feed_forward", ("w1", "w3"), "w13"))


@torch.inference_mode()
def activation_ranges(model: nn.Module, tokens: list[int]) -> dict[int, torch.Tensor]:
    """max |input| per channel of every projection, over one forward pass on `tokens`."""
    ranges: dict[int, torch.Tensor] = {}
    hooks = []
    for parent, name in _targets(model):
        mod = getattr(parent, name)

        def hook(m: nn.Module, args: tuple[torch.Tensor, ...], key: int = id(mod)) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            ranges[key] = torch.maximum(ranges[key], x) if key in ranges else x

        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        dev = model.tok_embeddings.weight.device
        model(torch.tensor([tokens], device=dev))
    finally:
        for h in hooks:
            h.remove()
    return ranges


def quantize_model(
    model: nn.Module, scheme: str, calibration_tokens: list[int] | None = None
) -> nn.Module:
    """Replace the projections of every layer and the output head with `scheme` in place.

    With `calibration_tokens` (see `CALIBRATION_TEXT`), each projection is smoothed first
    (SmoothQuant): a channel's activation range is split evenly with its weights. Embeddings
    and norms stay in float (a lookup reads one row; norms are tiny).
    """
    if scheme not in SCHEMES:
        raise InvalidRequestError(
            f"unknown quantization {scheme!r}", f"use one of: {', '.join(SCHEMES)}", "quantize"
        )
    device = model.tok_embeddings.weight.device
    if device.type != "cpu":
        raise InvalidRequestError(
            f"--quantize {scheme} runs on CPU only (the model is on {device})",
            "drop --quantize on GPU: bfloat16 is the fast path there",
            "quantize",
        )
    ranges = activation_ranges(model, calibration_tokens) if calibration_tokens else {}

    def quantized(weights: list[torch.Tensor], x_range: torch.Tensor | None) -> Int8Linear:
        w = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0]
        smooth = None
        if x_range is not None:
            w_range = w.abs().amax(dim=0).float().clamp(min=1e-5)
            smooth = x_range.clamp(min=1e-5) ** SMOOTH_ALPHA / w_range ** (1 - SMOOTH_ALPHA)
            smooth = smooth.clamp(min=1e-5)
        return Int8Linear(w, smooth=smooth)

    for layer in model.layers:
        for parent_name, names, fused in _FUSED:
            parent = getattr(layer, parent_name)
            mods = [getattr(parent, n) for n in names]
            # the fused projections share one input, so one range (they were hooked alike)
            setattr(parent, fused, quantized([m.weight for m in mods], ranges.get(id(mods[0]))))
            for n in names:
                delattr(parent, n)
        for parent, name in ((layer.attention, "wo"), (layer.feed_forward, "w2")):
            mod = getattr(parent, name)
            setattr(parent, name, quantized([mod.weight], ranges.get(id(mod))))
    model.output = quantized([model.output.weight], ranges.get(id(model.output)))
    return model
