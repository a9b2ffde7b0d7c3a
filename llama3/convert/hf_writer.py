"""Hugging Face's layout: config.json (LlamaForCausalLM), `model.safetensors` or
`model-0000X-of-0000Y.safetensors` + `model.safetensors.index.json` (files up to
`--max-shard-size`, as `save_pretrained` splits them), generation_config.json with every stop id,
and the tokenizer files. q/k rows get HF's rotate-half permutation (`names.permute_meta_qk`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.names import _HF_LAYER, _HF_TOP, permute_meta_qk
from ..config import ModelArgs
from .safetensors_stream import Entry, SafetensorsStream
from .source import Source
from .stream import load_tensor, release
from .tokenizer_export import TokenizerExport

INDEX = "model.safetensors.index.json"
_TORCH_DTYPE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_META_TO_HF_LAYER = {v: k for k, v in _HF_LAYER.items()}
_META_TO_HF_TOP = {v: k for k, v in _HF_TOP.items()}


def hf_name(meta: str) -> str:
    if meta in _META_TO_HF_TOP:
        return _META_TO_HF_TOP[meta]
    _, i, rest = meta.split(".", 2)
    return f"model.layers.{i}.{_META_TO_HF_LAYER[rest]}"


def hf_config(args: ModelArgs, dtype: torch.dtype, tokenizer: TokenizerExport) -> dict[str, Any]:
    """config.json with the classic keys (rope_theta + rope_scaling) every transformers reads."""
    stops = tokenizer.stop_ids
    eos = tokenizer.tok.eos_id if tokenizer.tok is not None else None
    s = args.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.tok.bos_id if tokenizer.tok is not None else None,
        "eos_token_id": stops if len(stops) > 1 else eos,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "hidden_size": args.dim,
        "initializer_range": 0.02,
        "intermediate_size": args.hidden_dim,
        "max_position_embeddings": args.max_position_embeddings,
        "mlp_bias": False,
        "num_attention_heads": args.n_heads,
        "num_hidden_layers": args.n_layers,
        "num_key_value_heads": args.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": args.norm_eps,
        "rope_scaling": None
        if s is None
        else {
            "factor": s.factor,
            "high_freq_factor": s.high_freq_factor,
            "low_freq_factor": s.low_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
            "rope_type": "llama3",
        },
        "rope_theta": args.rope_theta,
        "tie_word_embeddings": args.tie_word_embeddings,
        "torch_dtype": _TORCH_DTYPE[dtype],
        "use_cache": True,
        "vocab_size": args.vocab_size,
    }


def generation_config(source: Source, tokenizer: TokenizerExport) -> dict[str, Any]:
    """The source's generation settings, with eos_token_id = every stop id the tokenizer knows."""
    gen = {k: v for k, v in source.ckpt.generation_config.items() if not k.startswith("_")}
    if tokenizer.tok is not None:
        if tokenizer.tok.bos_id is not None:
            gen["bos_token_id"] = tokenizer.tok.bos_id
        stops = tokenizer.stop_ids
        if stops:
            gen["eos_token_id"] = list(stops)
    return gen


def _pack(entries: list[Entry], limit: int) -> list[list[Entry]]:
    """Greedy, in order, like save_pretrained: a new file when the next tensor would pass `limit`
    (a tensor larger than `limit` gets a file of its own)."""
    files: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if files[-1] and size + e.nbytes > limit:
            files.append([])
            size = 0
        files[-1].append(e)
        size += e.nbytes
    return files


def write_hf(
    source: Source,
    tokenizer: TokenizerExport,
    out: Path,
    dtype: torch.dtype,
    max_shard_size: int,
    on_tensor: Callable[[str], None],
) -> list[Path]:
    """Write into the (temporary) directory `out`; return the safetensors files."""
    if source.rope_error is not None:
        raise source.rope_error
    args = source.args
    names = [n for n in source.names if not (args.tie_word_embeddings and n == "output.weight")]
    entries = [Entry(hf_name(n), tuple(source.ckpt.tensors[n].shape), dtype) for n in names]
    meta_of = dict(zip((e.name for e in entries), names))
    tokenizer.write_hf(out, args.max_position_embeddings)  # first: a tokenizer error fails early
    groups = _pack(entries, max_shard_size)
    n_files = len(groups)
    files: list[Path] = []
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups):
        fname = (
            "model.safetensors"
            if n_files == 1
            else f"model-{k + 1:05d}-of-{n_files:05d}.safetensors"
        )
        stream = SafetensorsStream(out / fname, group, {"format": "pt"})
        try:
            for e in group:
                meta = meta_of[e.name]
                t = load_tensor(source, meta, dtype)
                if meta.endswith("attention.wq.weight"):
                    t = permute_meta_qk(t, args.n_heads)
                elif meta.endswith("attention.wk.weight"):
                    t = permute_meta_qk(t, args.kv_heads)
                stream.write(e.name, t)
                del t
                release(source)
                on_tensor(f"{fname}:{e.name}")
                weight_map[e.name] = fname
        except BaseException:
            stream.abort()
            raise
        stream.close()
        files.append(out / fname)
    if n_files > 1:
        total = sum(e.nbytes for e in entries)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(hf_config(args, dtype, tokenizer), indent=2) + "\n")
    gen = generation_config(source, tokenizer)
    if gen:
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return files
