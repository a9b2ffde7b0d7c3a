"""`Linear`: nn.Linear with a faster product for the few-row inputs of decoding on CPU.

For a handful of rows (a decode step's tokens) MKL's sgemm is markedly faster computing
`W @ x^T` than `x @ W^T` (measured on AVX2: 1.3-4x for 4-64 rows, the vocabulary projection
included); both are the same sums, so results agree to float rounding. GPUs and long inputs
(prefill) keep `F.linear`. Parameter names and shapes are nn.Linear's, so checkpoints load as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: rows up to which the transposed product wins on CPU (measured with bench/linear_rows.py)
FEW_ROWS = 64


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        # Built on the meta device, then loaded: random init there would only import
        # torch._dynamo and sympy (~80 MB of resident modules) to fill tensors without storage.
        if not self.weight.is_meta:
            super().reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if x.device.type != "cpu" or rows > FEW_ROWS or self.bias is not None or rows < 2:
            return F.linear(x, self.weight, self.bias)
        y = torch.mm(self.weight, x.reshape(rows, -1).t()).t()
        return y.reshape(*x.shape[:-1], self.out_features)
