"""A CLI verb under torchrun: rank 0 runs it, the other ranks load their shard and follow.

Rank 0 runs the verb exactly as a single process would (the console, the HTTP port, the AIME
connection are its own); its model announces every call (`driver`), so the followers need only
the model flags of the same command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import group
from .driver import Driver, follow

#: verbs that run a model and so can run across ranks
VERBS = ("chat", "generate", "serve", "perplexity", "aime-worker")
#: verbs every rank runs itself, data-parallel (`finetune.distributed`)
DATA_PARALLEL = ("finetune",)


def model_spec(args: argparse.Namespace) -> str | None:
    return getattr(args, "model_pos", None) or getattr(args, "model", None)


def run(args: argparse.Namespace) -> int:
    """Run `args.run(args)` as rank 0 of the torchrun job, or follow it on the other ranks."""
    tp = group.init(device=getattr(args, "device", None))
    try:
        if tp.rank != 0:
            sys.stdout = open(os.devnull, "w")  # only rank 0 answers
            from ..loader import load
            from ..registry import resolve_model

            lm = load(
                resolve_model(model_spec(args)),
                dtype=getattr(args, "dtype", None),
                quantize=getattr(args, "quantize", None),
                tensor_parallel=tp,
            )
            follow(lm.model, tp)
            return 0
        tp.driver = Driver(tp)
        return int(args.run(args) or 0)
    finally:
        group.shutdown()
