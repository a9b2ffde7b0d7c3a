"""Argument groups shared by the verbs, turned into library objects at the edge."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..generation.params import SamplingParams
from ..parallel import current
from ..quant import LOAD_CHOICES, SCHEMES_HELP
from ..registry import resolve_model

if TYPE_CHECKING:
    from ..generation.llama import Llama


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "-m",
        help="Meta checkpoint dir, Hugging Face dir or .gguf file (default: SmolLM2-135M-Instruct)",
    )
    g.add_argument("--max-seq-len", type=int, help="context length (default: what fits in memory)")
    g.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    g.add_argument(
        "--dtype", help="float32, bfloat16, float16 (default: float32 on CPU, bfloat16 on CUDA)"
    )
    g.add_argument(
        "--quantize",
        choices=LOAD_CHOICES,
        help=SCHEMES_HELP,
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar while loading")


def add_adapter_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapter",
        help="a LoRA adapter folder (llama3 finetune --out, or PEFT's save_pretrained) run "
        "unmerged over the model",
    )


def add_compile_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with a torch.compile'd step (needs a C++ compiler on CPU; the first run "
        "compiles for minutes, later runs reuse the cache)",
    )


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-tokens", type=int, help="new tokens at most (default: up to the context)")
    g.add_argument("--seed", type=int, help="sampling seed for reproducible output")


def resolve_model_path(spec: str | None) -> Path:
    """--model value -> a path (a local path, a hub id in the local HF cache, or the default)."""
    return resolve_model(spec)


def load_llama(args: argparse.Namespace, max_batch_size: int = 1) -> Llama:
    from ..generation.llama import Llama

    path = resolve_model(args.model)
    quiet = getattr(args, "quiet", False)
    llm = Llama.load(
        path,
        device=args.device,
        dtype=args.dtype,
        max_seq_len=args.max_seq_len,
        max_batch_size=max_batch_size,
        progress=not quiet,
        quantize=getattr(args, "quantize", None),
        tensor_parallel=current(),  # set under torchrun (`parallel.launch`)
        adapter=getattr(args, "adapter", None),
    )
    if not quiet and llm.loaded is not None and os.environ.get("RANK", "0") == "0":
        print(f"weights: {llm.loaded.weights_note}", file=sys.stderr, flush=True)
    if getattr(args, "compile", False):
        if not quiet:
            print("compiling the decode step ...", file=sys.stderr, flush=True)
        took = llm.compile(batch_sizes=[max_batch_size])
        if not quiet:
            print(f"compiled in {took:.0f} s", file=sys.stderr, flush=True)
    return llm


def sampling_params(args: argparse.Namespace, **extra) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
        **extra,
    )
