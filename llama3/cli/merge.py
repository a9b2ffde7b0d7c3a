"""`llama3 merge`: a LoRA adapter folded into the model's weights, written as a new checkpoint.

The output is the converter's (`llama3 convert`): a Hugging Face directory by default, or a Meta
directory or a GGUF file with `--to`; the merged model then runs without `--adapter`, anywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..registry import resolve_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="the base model the adapter was trained on")
    p.add_argument("--adapter", required=True, help="the adapter folder (PEFT format)")
    p.add_argument("--out", required=True, help="the merged checkpoint (a new folder or .gguf)")
    p.add_argument("--to", choices=("hf", "meta", "gguf"), default="hf", help="format (hf)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 (default: the source's)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import read_checkpoint
    from ..convert import ConvertOptions, convert
    from ..lora import read_adapter
    from ..lora.merge import merge_into

    model = resolve_model(args.model)
    adapter = read_adapter(args.adapter, read_checkpoint(model).args)  # checked before writing
    options = ConvertOptions.make(args.to, args.out, dtype=args.dtype)
    result = convert(model, options, edit=lambda source: merge_into(source, adapter))
    n = len(adapter.weights)
    print(f"wrote {Path(result.out)} ({result.target}, {result.dtype}): {n} projections merged")
    return 0
