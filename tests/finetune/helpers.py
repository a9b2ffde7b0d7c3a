"""Shared pieces of the fine-tuning tests: a small chat dataset and a tiny model loaded here."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def chat_records(n: int = 12) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say {i}"},
                {"role": "assistant", "content": f"Sure: {i} " * (1 + i % 3)},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def load_tiny(path: Path, quantize: str = "none"):
    from llama3.loader import load

    return load(path, device="cpu", dtype="float32", quantize=quantize)


def to_meta_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF rotate-half row order -> Meta's interleaved order (written out here, as factory does)."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).permute(0, 2, 1, 3).reshape(rows, cols)
