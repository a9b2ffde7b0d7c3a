"""Int4Linear: group-wise int4 weights kept 4-bit, checked against the float weights they came
from, against its own dequantized weights in every product path, and, for GGUF's Q4_0/Q4_1/Q4_K,
bit for bit against the gguf package's reference decoder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from llama3 import Llama, kernels
from llama3.errors import InvalidRequestError
from llama3.quant import bf16_rows, int4
from llama3.quant.gguf_blocks import dequantize as blocks_dequantize
from llama3.quant.int4 import GROUPS, Int4Linear


def assert_product_matches(lin: Int4Linear, w: torch.Tensor, x: torch.Tensor) -> None:
    """lin(x) equals F.linear(x, w): to float rounding on the slab path; in the kernel (any row
    count) within half a step of each activation row's int16 grid times |w|, or, in the AVX2
    build's group-32 kernel with LLAMA3_INT4_Q8=1, of each 32-block's int8 grid."""
    y, ref = lin(x), F.linear(x, w)
    assert y.shape == ref.shape and y.dtype == torch.float32
    x2, y2, ref2 = (t.reshape(-1, t.shape[-1]) for t in (x, y, ref))
    if lin._native:
        rounding = x2.abs() @ w.abs().t()
        if lin.group == 32 and kernels.int4_q8():
            blocks = x2.reshape(x2.shape[0], -1, 32).abs().amax(dim=-1, keepdim=True)
            half_step = (blocks / 127 / 2).expand(-1, -1, 32).reshape(x2.shape)
            bound = half_step @ w.abs().t() + 1e-5 * rounding
        else:
            half_step = x2.abs().amax(dim=-1, keepdim=True) / 32767 / 2
            bound = half_step * w.abs().sum(dim=1) + 1e-6 * rounding
        assert ((y2 - ref2).abs() <= bound).all()
    else:
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("group", GROUPS)
def test_from_float_is_within_half_a_step_and_round_trips(group: int) -> None:
    torch.manual_seed(group)
    w = torch.randn(48, 256) * torch.rand(48, 1) * 3
    w[0, :group] = 0.5  # a constant group: scale 0, reproduced exactly
    lin = Int4Linear.from_float(w, group)
    assert (lin.in_features, lin.out_features, lin.group) == (256, 48, group)
    deq = lin.dequantize()
    assert deq.dtype == torch.float32 and deq.shape == w.shape

    t = lin.tensors()
    codes, scale, zero = t["codes"], t["scale"], t["zero"]
    assert codes.dtype == torch.uint8 and codes.shape == (48, 128)
    assert scale.dtype == zero.dtype == torch.float32 and scale.shape == (48, 256 // group)
    # within half a step of its group's scale (plus float rounding of the affine map)
    step = scale.repeat_interleave(group, dim=1)
    assert ((w - deq).abs() <= step / 2 + 1e-5 * w.abs().max()).all()
    assert torch.equal(deq[0, :group], w[0, :group])

    # the documented layout: element 2j in the low nibble of byte j, 2j + 1 in the high nibble
    c = torch.stack([codes & 0x0F, codes >> 4], dim=-1).reshape(48, 256)
    assert int(c.max()) <= 15
    ref = (c.float().view(48, -1, group) * scale[..., None] + zero[..., None]).view(48, 256)
    torch.testing.assert_close(deq, ref, rtol=0, atol=1e-6)

    again = Int4Linear(codes.clone(), scale.clone(), zero.clone(), group)
    assert torch.equal(again.dequantize(), deq)
    assert all(torch.equal(a, b) for a, b in zip(again.tensors().values(), t.values()))
    assert lin.weight_nbytes() == 48 * 128 + 2 * 4 * 48 * (256 // group)
    assert repr(lin) == f"Int4Linear(in_features=256, out_features=48, int4 group={group})"


@pytest.mark.parametrize(
    "slab, native",
    [(None, True), (None, False), (3 * 128, False)],
    ids=["kernel", "one-slab", "many-slabs"],
)
def test_forward_matches_its_dequantized_weights(slab, native, monkeypatch) -> None:
    if slab is not None:  # force the slab-by-slab product (3 rows a slab, with a ragged last one)
        monkeypatch.setattr(int4, "_SLAB_ELEMENTS", slab)
    torch.manual_seed(1)
    lin = Int4Linear.from_float(torch.randn(40, 128), 64)
    lin._native = native and kernels.available()  # the slab path: what a machine without them runs
    w = lin.dequantize()
    for rows in (1, 5, 33, 60):
        assert_product_matches(lin, w, torch.randn(rows, 128))
    x = torch.randn(2, 7, 128)
    assert lin(x).shape == (2, 7, 40)
    assert_product_matches(lin, w, x)
    xb = x.to(torch.bfloat16)  # other float dtypes run in float32 and come back in their dtype
    assert lin(xb).dtype == torch.bfloat16


def random_q4_k(rows: int, cols: int, seed: int) -> np.ndarray:
    """Valid Q4_K blocks (gguf cannot quantize to Q4_K): random codes and 6-bit scales and mins,
    with finite, sane f16 d and dmin. Shaped like GGUFReader data: (rows, bytes per row)."""
    _, type_size = GGML_QUANT_SIZES[T.Q4_K]
    rng = np.random.default_rng(seed)
    n = rows * cols // 256
    raw = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
    raw[:, 0:2] = rng.uniform(1e-3, 0.05, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    raw[:, 2:4] = rng.uniform(1e-3, 0.05, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, -1)


def gguf_raw(qtype: T, shape: tuple[int, int], seed: int) -> np.ndarray:
    if qtype == T.Q4_K:
        return random_q4_k(*shape, seed)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return gq.quantize(x, qtype)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize("as_torch", [False, True], ids=["numpy", "torch"])
def test_from_gguf_is_exact(qtype: T, as_torch: bool) -> None:
    shape = (24, 512)
    raw = gguf_raw(qtype, shape, seed=int(qtype))
    oracle = torch.from_numpy(gq.dequantize(raw, qtype).astype(np.float32))
    assert oracle.shape == shape and oracle.isfinite().all()

    lin = Int4Linear.from_gguf(torch.from_numpy(raw) if as_torch else raw, int(qtype), shape)
    assert lin is not None and lin.group == 32
    assert (lin.out_features, lin.in_features) == shape
    deq = lin.dequantize()
    # bit for bit: no requantization, and the same float32 arithmetic as the reference decoders
    assert torch.equal(deq, oracle)
    assert torch.equal(deq, blocks_dequantize(raw, int(qtype), shape))
    x = torch.randn(3, 512)
    assert_product_matches(lin, oracle, x[:1])
    assert_product_matches(lin, oracle, x)


def test_from_gguf_declines_other_types() -> None:
    raw = gq.quantize(np.ones((4, 64), dtype=np.float32), T.Q8_0)
    assert Int4Linear.from_gguf(raw, int(T.Q8_0), (4, 64)) is None
    assert Int4Linear.from_gguf(np.zeros((4, 128), np.uint8), int(T.F16), (4, 64)) is None


def test_bad_group_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequestError, match="group size 48 is not supported") as e:
        Int4Linear.from_float(torch.randn(4, 96), group=48)
    assert e.value.hint == "use one of: 32, 64, 128"
    with pytest.raises(InvalidRequestError, match="in_features 96 is not a multiple") as e:
        Int4Linear.from_float(torch.randn(4, 96), group=64)
    assert e.value.hint == "use group 32"
    with pytest.raises(InvalidRequestError, match="in_features 80 is not a multiple") as e:
        Int4Linear.from_float(torch.randn(4, 80))
    assert e.value.hint == "keep this layer in float: int4 needs in_features divisible by 32"


def _mapped_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of the file `path` (/proc/self/smaps)."""
    total, inside, name = 0, False, os.path.realpath(path)
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                inside = line.rstrip().endswith(name)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/smaps")
def test_gguf_4bit_blocks_are_read_not_left_mapped(smollm2_path):
    """int4 layers repack the file's Q4_1 blocks; read through the mapping, those pages stayed
    resident (~60 MB of SmolLM2's RSS) as long as the norms' zero-copy views kept it open."""
    before = _mapped_rss_kb(smollm2_path)
    llm = Llama.load(smollm2_path, quantize="int4", max_seq_len=64)
    assert isinstance(llm.model.layers[0].feed_forward.w2, Int4Linear)
    grown = _mapped_rss_kb(smollm2_path) - before
    assert grown < 8192, f"{grown} kB of the GGUF file resident after loading"


@pytest.mark.skipif(not kernels.available(), reason="the slab path's BLAS makes no row promise")
def test_a_rows_product_does_not_depend_on_the_other_rows() -> None:
    """A serving step multiplies as many rows as its batch happens to hold (decodes, prompt
    chunks, a prefix-cache hit's remainder): each row's result is the same bits at any row count,
    so a request's greedy tokens never depend on its neighbours (README: "the one the model
    gives alone")."""
    torch.manual_seed(7)
    lin = Int4Linear.from_float(torch.randn(96, 320), 32)
    x = torch.randn(200, 320) * torch.rand(200, 1) * 4
    with bf16_rows.batch_invariant():
        whole = lin(x)
        for lo, hi in [(0, 1), (5, 6), (3, 40), (0, 48), (10, 75), (137, 200)]:
            assert torch.equal(lin(x[lo:hi]), whole[lo:hi]), (lo, hi)
