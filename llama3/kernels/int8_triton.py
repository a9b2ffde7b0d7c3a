"""The Triton source of `gpu_int8`'s kernel; imported only where Triton is installed."""

import triton
import triton.language as tl


@triton.jit
def codes_to_float(w, BITS: tl.constexpr):
    """int8 codes as float32; with BITS from their bits: the code's byte read unsigned, XOR
    0x4B000080, is the float 2**23 + 128 + code, so a zero extension, one XOR and one
    subtraction replace a conversion."""
    if BITS:
        b = w.to(tl.uint8, bitcast=True).to(tl.int32) ^ 0x4B000080
        return b.to(tl.float32, bitcast=True) - 8388736.0
    else:
        return w.to(tl.float32)


@triton.jit
def int8_rows(
    x_ptr,
    w_ptr,
    s_ptr,
    y_ptr,
    N,
    K,
    stride_w,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BITS: tl.constexpr,
):
    """y[n] = scale[n] * sum_k x[k] * w[n, k] for this program's BLOCK_N rows."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows past the end re-read the last row (their results are not stored): no load masks
    rows = tl.minimum(rn, N - 1)
    rk = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    n_main = K // BLOCK_K
    for i in range(n_main):
        k = i * BLOCK_K
        w = tl.load(w_rows + (k + rk)[None, :], eviction_policy="evict_first")
        x = tl.load(x_ptr + k + rk).to(tl.float32)
        acc += codes_to_float(w, BITS) * x[None, :]
    if n_main * BLOCK_K < K:
        kk = n_main * BLOCK_K + rk
        w = tl.load(w_rows + kk[None, :], mask=(kk < K)[None, :], other=0)
        x = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        acc += codes_to_float(w, BITS) * x[None, :]
    y = tl.sum(acc, axis=1) * tl.load(s_ptr + rows)
    tl.store(y_ptr + rn, y, mask=rn < N)
