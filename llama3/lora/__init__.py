"""LoRA adapters over this engine's projections: float `Linear` and int8/int4 layers (QLoRA).

`attach` adds trainable low-rank updates (the base stays frozen and bit-unchanged), `adapters`
finds them, `merge` folds them into float weights; `read_adapter` / `load_adapter` /
`save_adapter` speak PEFT's on-disk format, so adapters move between this engine and
transformers + PEFT both ways. Training lives in `llama3.finetune`.
"""

from __future__ import annotations

from .attach import adapters, attach, detach, merge, trainable_parameters
from .config import LoRAConfig, parse_targets
from .layers import LoRA, LoRAFused, LoRALinear
from .peft_io import Adapter, load_adapter, peft_state_dict, read_adapter, save_adapter

__all__ = [
    "Adapter",
    "LoRA",
    "LoRAConfig",
    "LoRAFused",
    "LoRALinear",
    "adapters",
    "attach",
    "detach",
    "load_adapter",
    "merge",
    "parse_targets",
    "peft_state_dict",
    "read_adapter",
    "save_adapter",
    "trainable_parameters",
]
