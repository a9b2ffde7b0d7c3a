"""Supervised fine-tuning with LoRA / QLoRA on the engine that serves the result.

`data` turns JSONL records into labelled token ids (assistant turns and their end-of-turn token,
padding never labelled), `forward` runs the model under autograd, `trainer` is the loop with
checkpoints and exact resume. The adapter modules and PEFT files are `llama3.lora`'s.
"""

from __future__ import annotations

from .data import Batch, DataError, Example, Renderer, batches, read_examples
from .forward import IGNORE, loss_sum
from .trainer import Interrupted, TrainConfig, Trainer

__all__ = [
    "IGNORE",
    "Batch",
    "DataError",
    "Example",
    "Interrupted",
    "Renderer",
    "TrainConfig",
    "Trainer",
    "batches",
    "loss_sum",
    "read_examples",
]
