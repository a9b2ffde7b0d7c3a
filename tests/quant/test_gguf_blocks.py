"""GGUF block dequantization checked against the gguf package's numpy reference decoders."""

from __future__ import annotations

import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from llama3.errors import CheckpointError
from llama3.quant.gguf_blocks import SUPPORTED_TYPES, block_layout, dequantize, type_name

# Byte offsets of the f16 scale fields in each block (llama.cpp's block_* structs).
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q8_0: (0,),
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}
QUANT_TYPES = list(F16_FIELDS)
# Types gguf.quants can also quantize from floats.
QUANTIZABLE = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]


def random_blocks(qtype: T, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random block bytes shaped like GGUFReader data, (rows, bytes per row), with finite scales."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    n_blocks = rows * cols // block_size
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scale = rng.uniform(-2.0, 2.0, size=n_blocks).astype(np.float16)
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block_size * type_size)


def assert_matches(ours: torch.Tensor, ref: np.ndarray) -> None:
    ref = np.asarray(ref, dtype=np.float32)
    assert tuple(ours.shape) == ref.shape
    assert np.isfinite(ref).all()
    scale = max(float(np.abs(ref).max()), 1.0)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf_reference(qtype: T) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    rows, cols = 3, 2 * block_size
    raw = random_blocks(qtype, rows, cols, seed=int(qtype))
    ref = gq.dequantize(raw, qtype)
    assert ref.shape == (rows, cols)
    out = dequantize(raw, int(qtype), (rows, cols))
    assert out.dtype == torch.float32
    assert_matches(out, ref)


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_floats_match_gguf_reference(qtype: T) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    raw = gq.quantize(x, qtype)
    out = dequantize(raw, int(qtype), x.shape)
    assert_matches(out, gq.dequantize(raw, qtype))
    # The gguf quantizer is lossy but close: a sanity check that the data really is x.
    assert np.abs(out.numpy() - x).max() < 0.5


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_torch_input_flat_bytes_and_3d_shape(qtype: T) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    shape = (2, 3, block_size)
    raw = random_blocks(qtype, 6, block_size, seed=7)
    ref = gq.dequantize(raw, qtype).reshape(shape)
    out = dequantize(torch.from_numpy(raw.reshape(-1).copy()), int(qtype), shape)
    assert_matches(out, ref)


def test_many_blocks_cross_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama3.quant.gguf_blocks as gb

    # A chunk of 3 blocks makes 10 blocks split unevenly (3 + 3 + 3 + 1).
    monkeypatch.setattr(gb, "_CHUNK_ELEMENTS", 3 * 256)
    raw = random_blocks(T.Q4_K, 5, 512, seed=3)
    ref = gq.dequantize(raw, T.Q4_K)
    assert_matches(dequantize(raw, int(T.Q4_K), (5, 512)), ref)
    out = dequantize(raw, int(T.Q4_K), (5, 512), dtype=torch.bfloat16)
    assert torch.equal(out, torch.from_numpy(ref).to(torch.bfloat16))


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q6_K, T.Q4_K], ids=lambda t: t.name)
def test_bfloat16_output(qtype: T) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 2, block_size, seed=5)
    out = dequantize(raw, int(qtype), (2, block_size), dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    ref = torch.from_numpy(gq.dequantize(raw, qtype)).to(torch.bfloat16)
    assert torch.equal(out, ref)


def test_float_types_round_trip() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5)).astype(np.float32)

    out = dequantize(x, int(T.F32), (3, 5))
    assert torch.equal(out, torch.from_numpy(x))
    assert dequantize(np.float32([2.5]), int(T.F32), ()).item() == 2.5  # 0-d tensors exist in F32

    h = x.astype(np.float16)
    out = dequantize(h, int(T.F16), (3, 5))
    assert torch.equal(out, torch.from_numpy(h.astype(np.float32)))
    assert dequantize(h, int(T.F16), (3, 5), dtype=torch.float16).dtype == torch.float16

    # GGUFReader hands BF16 over as raw bytes; gguf.quants is the reference both ways.
    b = gq.quantize(x, T.BF16)
    assert b.dtype == np.uint8
    out = dequantize(b, int(T.BF16), (3, 5))
    assert_matches(out, gq.dequantize(b, T.BF16))
    assert torch.equal(out, torch.from_numpy(x).to(torch.bfloat16).float())


def test_read_only_input_is_not_aliased_and_does_not_warn() -> None:
    x = np.arange(8, dtype=np.float32)
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dequantize(x, int(T.F32), (2, 4))
    out.add_(1.0)
    assert x[0] == 0.0

    raw = random_blocks(T.Q8_0, 1, 32)
    raw.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dequantize(raw, int(T.Q8_0), (1, 32))


def test_gguf_reader_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 64)).astype(np.float32)  # torch shape (out_features, in_features)
    q8 = gq.quantize(w, T.Q8_0)
    q6 = random_blocks(T.Q6_K, 2, 256, seed=9)
    h = rng.standard_normal((2, 7)).astype(np.float16)

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("w_q8", q8, raw_dtype=T.Q8_0)
    writer.add_tensor("w_q6", q6, raw_dtype=T.Q6_K)
    writer.add_tensor("w_f16", h)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    t8 = tensors["w_q8"]
    assert t8.tensor_type == T.Q8_0
    # ggml order: ne[0] (the contiguous in_features) first; data is (rows, bytes per row).
    assert t8.shape.tolist() == [64, 3]
    assert t8.data.dtype == np.uint8 and t8.data.shape == (3, 68)
    shape = tuple(reversed(t8.shape.tolist()))
    out = dequantize(t8.data, int(t8.tensor_type), shape)
    assert_matches(out, gq.dequantize(q8, T.Q8_0))
    assert np.abs(out.numpy() - w).max() < 0.05

    t6 = tensors["w_q6"]
    out = dequantize(t6.data, int(t6.tensor_type), tuple(reversed(t6.shape.tolist())))
    assert_matches(out, gq.dequantize(q6, T.Q6_K))

    tf = tensors["w_f16"]
    assert tf.data.dtype == np.float16
    out = dequantize(tf.data, int(tf.tensor_type), tuple(reversed(tf.shape.tolist())))
    assert torch.equal(out, torch.from_numpy(h.astype(np.float32)))


def test_block_layout_and_names() -> None:
    for t in SUPPORTED_TYPES:
        assert block_layout(t) == GGML_QUANT_SIZES[T(t)]
    assert {T(t).name for t in SUPPORTED_TYPES} == {
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    }  # fmt: skip
    assert type_name(int(T.Q4_K)) == "Q4_K"
    assert type_name(12345) == "type 12345"


def test_unsupported_type_error() -> None:
    raw = np.zeros(GGML_QUANT_SIZES[T.IQ2_XXS][1], dtype=np.uint8)
    with pytest.raises(CheckpointError) as err:
        dequantize(raw, int(T.IQ2_XXS), (1, 256))
    assert "IQ2_XXS" in err.value.message
    assert err.value.hint is not None and "re-quantize" in err.value.hint
    assert "Q4_K" in err.value.hint
    with pytest.raises(CheckpointError, match="IQ2_XXS"):
        block_layout(int(T.IQ2_XXS))
    with pytest.raises(CheckpointError, match="type 999"):
        dequantize(raw, 999, (1, 256))


def test_size_and_shape_errors() -> None:
    raw = random_blocks(T.Q8_0, 2, 64)
    with pytest.raises(CheckpointError, match="bytes"):
        dequantize(raw[:, :-1], int(T.Q8_0), (2, 64))
    with pytest.raises(CheckpointError, match="32-element blocks"):
        dequantize(raw, int(T.Q8_0), (4, 32 + 1))
