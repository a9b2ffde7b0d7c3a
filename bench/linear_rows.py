"""Why `llama3.model.linear.Linear` computes few-row products as `W @ x^T` on CPU.

Times `F.linear(x, W)` against `(W @ x^T)^T` for SmolLM2-135M's projection shapes and 1-256 rows
(a decode step's tokens), float32, torch's default threads. Prints milliseconds and the speedup.

    python bench/linear_rows.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

SHAPES = {
    "q/o (576x576)": (576, 576),
    "w1/w3 (1536x576)": (1536, 576),
    "w2 (576x1536)": (576, 1536),
    "output (49152x576)": (49152, 576),
}


def timed(f, n: int) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':>20} {'rows':>5} {'F.linear ms':>12} {'W@x^T ms':>10} {'speedup':>8}")
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k)
        reps = 20 if n > 10000 else 200
        for rows in (1, 2, 4, 16, 64, 256):
            x = torch.randn(rows, k)
            a = timed(lambda x=x, w=w: F.linear(x, w), reps)
            b = timed(lambda x=x, w=w: torch.mm(w, x.t()).t(), reps)
            print(f"{name:>20} {rows:>5} {a:>12.3f} {b:>10.3f} {a / b:>7.2f}x")


if __name__ == "__main__":
    main()
