"""Load a model of any format together with its tokenizer and chat formatter.

This is the one place that decides which tokenizer goes with which checkpoint, checks that the
vocabulary fits the model, and picks the default context length (what fits in memory, never a
128K `max_position_embeddings` blindly).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import LoadedCheckpoint, read_checkpoint
from .checkpoint.loaded import read_bytes
from .config import ModelArgs
from .errors import ConfigError, TokenizerError
from .model.build import build_model
from .model.transformer import Transformer
from .tokenizer.base import BaseTokenizer
from .utils.device import available_memory, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from .parallel.group import TensorParallel

log = logging.getLogger(__name__)

LLAMA3_VOCAB = 128256
#: never plan more than this much of the free memory for the KV cache by default
KV_MEMORY_FRACTION = 0.5


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: BaseTokenizer
    checkpoint: LoadedCheckpoint
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    #: what the weights run as and why, one line ("int4: the file's Q4_1 blocks run as they are")
    weights_note: str = ""


def load_tokenizer_for(
    ckpt: LoadedCheckpoint, tokenizer_path: str | os.PathLike | None = None
) -> BaseTokenizer:
    from .tokenizer.tiktoken_bpe import Tokenizer

    version = "3.1" if ckpt.args.use_scaled_rope else "3.0"
    if tokenizer_path is not None:
        p = Path(tokenizer_path)
        if p.is_file() and p.suffix != ".gguf" and p.name != "tokenizer.json":
            return Tokenizer(p, special_tokens_version=version)
        from .tokenizer import load_tokenizer

        return load_tokenizer(p)
    src = ckpt.tokenizer_source
    if ckpt.gguf_vocabulary:
        from .tokenizer.gguf_vocab import tokenizer_from_gguf

        return tokenizer_from_gguf(ckpt.metadata)
    if src is not None and src.is_file():
        return Tokenizer(src, special_tokens_version=version)
    if src is not None:
        from .tokenizer import load_tokenizer

        return load_tokenizer(src)
    if ckpt.args.vocab_size == LLAMA3_VOCAB:
        log.info("no tokenizer next to %s; using the bundled Llama 3 tokenizer", ckpt.path)
        return Tokenizer(None, special_tokens_version=version)
    raise TokenizerError(
        f"no tokenizer found for {ckpt.path}",
        "put tokenizer.model (Meta) or tokenizer.json (Hugging Face) beside the weights, or pass tokenizer_path",
    )


def check_vocab(ckpt: LoadedCheckpoint, tok: BaseTokenizer) -> None:
    v = ckpt.args.vocab_size
    strict = ckpt.format == "meta"  # Meta's loader insists on equality; HF configs may pad
    if tok.n_words > v or (strict and tok.n_words != v):
        raise ConfigError(
            f"the tokenizer has {tok.n_words} tokens but the model's vocab_size is {v} ({ckpt.path})",
            "use the tokenizer that ships with these weights",
        )


def default_max_seq_len(
    args: ModelArgs, max_batch_size: int, dtype: torch.dtype, device: torch.device
) -> int:
    """The model's trained context, capped to what a KV cache for `max_batch_size` fits in memory."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_seq_token = args.kv_bytes_per_token(itemsize) * max(1, max_batch_size)
    fits = int(available_memory(device) * KV_MEMORY_FRACTION) // per_seq_token
    fits = max(256, fits // 256 * 256)
    return min(args.max_position_embeddings, fits)


def load(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    progress: bool = False,
    quantize: str | None = None,
    tensor_parallel: TensorParallel | None = None,
    auto_quantize: bool = True,
) -> LoadedModel:
    """Read, check and build. `progress` draws a bar on a terminal while the weights load;
    `quantize` ("int8", "int4", "int4-g64", "int4-g128") quantizes the projections layer by layer
    as they load (CPU); "none" keeps float weights; left out, `quant.default.choose` decides (a
    quantized GGUF runs as its quant, a `llama3 quantize` checkpoint as saved, float as float
    unless it would not fit). On CPU the native kernels build on a background thread meanwhile.
    With `tensor_parallel` (a run started by torchrun, `llama3.parallel`), this rank reads and
    builds only its shard; the ranks leave together once all have loaded."""
    t0 = time.perf_counter()
    tp = tensor_parallel
    dev = tp.device if tp is not None else resolve_device(device)  # cuda:LOCAL_RANK or cpu
    dt = resolve_dtype(dtype, dev)
    from . import kernels
    from .quant.default import choose

    # Built before the first prompt, overlapping the reading below (the weights, quantized
    # layers' construction waits for it).
    build = kernels.prepare() if dev.type == "cpu" else None
    ckpt = read_checkpoint(path, prefer_shards=tp.world if tp is not None else None)
    tok = load_tokenizer_for(ckpt, tokenizer_path)
    check_vocab(ckpt, tok)
    from .utils.progress import Progress

    total = sum(read_bytes(t, dt) for t in ckpt.tensors.values())
    if tp is not None:
        total //= tp.world
        progress = progress and tp.rank == 0
    choice = choose(ckpt, quantize, dev, dt, tensor_parallel=tp is not None, auto=auto_quantize)
    quantizer = None
    if choice.scheme is not None:
        from .quant.apply import LoadQuantizer, QuantSpec, check_device

        spec = QuantSpec.parse(choice.scheme)
        check_device(spec, dev)
        quantizer = LoadQuantizer(spec, dev)
    with Progress(
        total, f"loading {ckpt.path.name}", enabled=progress and sys.stderr.isatty()
    ) as bar:
        model = build_model(
            ckpt, device=dev, dtype=dt, on_bytes=bar.update, quantizer=quantizer, tp=tp
        )
    if build is not None:
        build.join()
    if tp is not None:
        tp.barrier()  # every shard is in memory before the first collective
    return LoadedModel(model, tok, ckpt, dev, dt, time.perf_counter() - t0, choice.reason)
