"""Meta's layout: `consolidated.NN.pth` (or AIME's `merged.{N}GPUs.NN.pth`) + params.json +
tokenizer.model. One shard is built at a time (torch.save needs the whole state dict), from only
the rows or columns of each source tensor that the shard holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from .meta_params import meta_params
from .plan import MetaShardPlan
from .source import Source
from .stream import load_tensor, release
from .tokenizer_export import TokenizerExport


def check_meta(source: Source, world: int) -> tuple[MetaShardPlan, dict]:
    """The shard plan and params.json, or the error saying why this model can't have them."""
    if source.rope_error is not None:
        raise source.rope_error
    return MetaShardPlan.make(source.args, world), meta_params(source.args)


def write_meta(
    source: Source,
    tokenizer: TokenizerExport,
    out: Path,
    dtype: torch.dtype,
    world: int,
    aime_names: bool,
    on_tensor: Callable[[str], None],
) -> list[Path]:
    """Write into the (temporary) directory `out`; return the shard files."""
    args = source.args
    plan, params = check_meta(source, world)
    # Tied models (Llama 3.2 1B/3B) have no output.weight in Meta's format.
    names = [n for n in source.names if not (args.tie_word_embeddings and n == "output.weight")]
    tokenizer.write_tiktoken(
        out / "tokenizer.model"
    )  # first: a vocabulary Meta can't hold fails early
    files = []
    for rank in range(world):
        shard: dict[str, torch.Tensor] = {}
        for name in names:
            cut = plan.cut(name, rank, source.ckpt.tensors[name].shape)
            shard[name] = load_tensor(source, name, dtype, cut)
            release(source)
            on_tensor(f"{plan.file_name(rank, aime_names)}:{name}")
        f = out / plan.file_name(rank, aime_names)
        torch.save(shard, f)
        files.append(f)
        del shard
        release(source)
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    return files
