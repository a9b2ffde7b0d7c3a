"""Cases for the GPU int8 one-row product (`llama3.kernels.gpu_int8`), run by test_gpu_int8.py in a
child process: on a CUDA device where there is one, else on the CPU through Triton's interpreter
(which must be on before Triton is first imported), which runs the same kernel source. The results are
the float64 product with the same int8 weights, for every tile setting the GPU bench sweeps and
for shapes that leave partial tiles; and `dequantized_product` routes one-row products to it."""

from __future__ import annotations

import pytest
import torch

from llama3.kernels import gpu_int8
from llama3.quant.int8 import dequantized_product, quantize_rows

pytest.importorskip("triton", reason="Triton is a test dependency (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def device():
    if not (torch.cuda.is_available() or gpu_int8.INTERPRETED):
        pytest.fail("run by tests/quant/test_gpu_int8.py: on CUDA, or with TRITON_INTERPRET=1")
    gpu_int8.register()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.double() @ codes.double().T) * scale.double()


def weights(n: int, k: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    codes, scale = quantize_rows(torch.randn(n, k, generator=gen))
    x = torch.randn(1, k, generator=gen)
    return x.to(device), codes.to(device), scale.to(device)


@pytest.mark.parametrize(
    "config",
    [
        gpu_int8.Config(4, 128),
        gpu_int8.Config(8, 256, bits=False),
        gpu_int8.Config(1, 512, num_warps=2),
        gpu_int8.Config(16, 64, num_stages=3),
    ],
    ids=str,
)
@pytest.mark.parametrize("n,k", [(64, 512), (37, 300), (130, 1000), (5, 40)])
def test_product_equals_the_float64_product(device, config, n, k):
    x, codes, scale = weights(n, k, device)
    y = gpu_int8.launch(x, codes, scale, config)
    assert y.shape == (1, n) and y.dtype == torch.float32
    ref = reference(x, codes, scale)
    # float32 products summed in float32: a few ulps of the sum of |terms|
    bound = 1e-6 * (x.abs().double() @ codes.abs().double().T) * scale.double() + 1e-30
    assert torch.all((y.double() - ref).abs() <= bound)


def test_bfloat16_rows_come_back_in_bfloat16(device):
    x, codes, scale = weights(96, 256, device, seed=1)
    xb = x.to(torch.bfloat16)
    y = gpu_int8.row_product(xb.reshape(1, 1, -1), codes, scale)
    assert y.shape == (1, 1, 96) and y.dtype == torch.bfloat16
    ref = reference(xb.float(), codes, scale).reshape(1, 1, -1)
    # within one bfloat16 step of the exact result (GPUs round to nearest, the interpreter truncates)
    assert torch.all((y.double() - ref).abs() <= ref.abs() * 2**-7 + 1e-6)


def test_one_row_products_take_the_kernel_and_match_the_cast_path(device, monkeypatch):
    x, codes, scale = weights(48, 160, device, seed=2)
    calls = []
    launch = gpu_int8.launch
    monkeypatch.setattr(gpu_int8, "launch", lambda *a, **kw: calls.append(a[3]) or launch(*a, **kw))
    gpu_int8.CONFIGS_BY_SHAPE[(48, 160)] = gpu_int8.Config(2, 64)
    try:
        one = dequantized_product(x.reshape(1, 1, -1), codes, scale)
    finally:
        del gpu_int8.CONFIGS_BY_SHAPE[(48, 160)]
    assert calls == [gpu_int8.Config(2, 64)]  # the measured tile for this shape, not the default
    two = dequantized_product(torch.cat([x, x]), codes, scale)  # two rows: the cast product
    assert len(calls) == 1
    torch.testing.assert_close(one.reshape(1, -1), two[:1], rtol=1e-5, atol=1e-5)
