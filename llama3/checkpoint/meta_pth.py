"""Meta's native checkpoint directory: params.json + consolidated.NN.pth (+ tokenizer.model).

N model-parallel shards are merged for a single process by Meta's rules (column-parallel weights
concatenated on dim 0, row-parallel on the last dim, norms taken from shard 0). Shards are opened
with `torch.load(mmap=True)`, so nothing is read until a tensor is materialised.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import ModelArgs
from ..errors import CheckpointError, ConfigError
from .loaded import LoadedCheckpoint, TensorSource
from .names import shard_dim


def is_meta_dir(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").is_file()


def _read_params(path: Path) -> dict:
    try:
        params = json.loads((path / "params.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path / 'params.json'} is not valid JSON ({e})",
            "restore the file from the original download",
        ) from None
    if not isinstance(params, dict):
        raise ConfigError(
            f"{path / 'params.json'} does not hold a JSON object",
            "restore the file from the original download",
        )
    return params


def _open_shard(f: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # zipfile/pickle errors on truncated or corrupt files
        raise CheckpointError(
            f"cannot read {f}: {type(e).__name__}: {e}",
            "the file is truncated or corrupt; download it again and check it against checklist.chk",
        ) from None
    if not isinstance(sd, dict):
        raise CheckpointError(
            f"{f} does not hold a state dict", "use Meta's consolidated.NN.pth files"
        )
    return sd


def _shard_files(path: Path, prefer: int | None) -> list[Path]:
    """The shard files to read: AIME's re-sharded `merged.{N}GPUs.NN.pth` when there are exactly
    `prefer` of them (a tensor-parallel run of that many ranks reads its own file), else Meta's
    `consolidated.NN.pth`, else one complete group of merged files, else any *.pth."""
    groups: dict[int, list[Path]] = {}
    for f in path.glob("merged.*GPUs.*.pth"):
        m = _MERGED.fullmatch(f.name)
        if m:
            groups.setdefault(int(m.group(1)), []).append(f)
    complete = {n: sorted(fs) for n, fs in groups.items() if len(fs) == n}
    if prefer in complete:
        return complete[prefer]
    files = sorted(path.glob("consolidated.*.pth"))
    if files:
        return files
    if complete:
        return complete[min(complete)]
    return sorted(path.glob("*.pth"))


_MERGED = re.compile(r"merged\.(\d+)GPUs\.(\d+)\.pth")


def read_meta_checkpoint(path: Path, prefer_shards: int | None = None) -> LoadedCheckpoint:
    params = _read_params(path)
    try:
        args = ModelArgs.from_meta_params(params)
    except TypeError as e:
        raise ConfigError(
            f"{path / 'params.json'}: {e}", "check the field types in params.json"
        ) from None
    files = _shard_files(path, prefer_shards)
    if not files:
        raise CheckpointError(
            f"no checkpoint files found in {path}",
            "a Meta checkpoint directory needs consolidated.00.pth (… .NN.pth) beside params.json",
        )
    n = len(files)
    if args.n_heads % n or args.dim % n:
        raise CheckpointError(
            f"{n} checkpoint shards do not divide the model (n_heads={args.n_heads}, dim={args.dim})",
            "a shard is missing or extra: compare the consolidated.*.pth files with checklist.chk",
        )
    shards = [_open_shard(f) for f in files]
    names = list(shards[0])
    for f, sd in zip(files[1:], shards[1:]):
        if set(sd) != set(names):
            raise CheckpointError(
                f"{f.name} holds different tensors than {files[0].name}",
                "the shards come from different checkpoints; download them again",
            )
    tensors: dict[str, TensorSource] = {}
    for name in names:
        if name == "rope.freqs":  # old conversions store the RoPE table; we recompute it
            continue
        parts = [sd[name] for sd in shards]
        dim = shard_dim(name) if n > 1 else None
        tensors[name] = _merged_source(name, parts, dim, args, files)
    if "output.weight" not in tensors:
        # Llama 3.2 1B/3B share the embedding with the output projection.
        args = args.replace(tie_word_embeddings=True)
    tok = path / "tokenizer.model"
    return LoadedCheckpoint(
        format="meta",
        path=path,
        args=args,
        tensors=tensors,
        tokenizer_source=tok if tok.is_file() else None,
        files=[path / "params.json", *files],
        metadata=params,
    )


def _merged_source(
    name: str, parts: list[torch.Tensor], dim: int | None, args: ModelArgs, files: list[Path]
) -> TensorSource:
    origin = (
        f"{files[0].name}:{name}"
        if len(files) == 1
        else f"{files[0].parent.name}/consolidated.*.pth:{name}"
    )
    if dim is None:
        t0 = parts[0]
        return TensorSource(
            tuple(t0.shape), lambda dtype: t0.to(dtype), origin, narrow=_narrower([t0], 0, origin)
        )
    shapes = {tuple(p.shape) for p in parts}
    if len(shapes) != 1:
        raise CheckpointError(
            f"{name} has different shapes across shards: {sorted(shapes)}",
            "the shards come from different checkpoints; download them again",
        )
    # When there are more shards than kv heads, Meta repeats each kv head's rows on consecutive
    # shards; keep one copy of each.
    if name.endswith(("attention.wk.weight", "attention.wv.weight")):
        rep = len(parts) // args.kv_heads if len(parts) > args.kv_heads else 1
        parts = parts[::rep]
    shape = list(parts[0].shape)
    shape[dim] *= len(parts)

    def load(dtype: torch.dtype) -> torch.Tensor:
        return torch.cat([p.to(dtype) for p in parts], dim=dim)

    return TensorSource(tuple(shape), load, origin, narrow=_narrower(parts, dim, origin))


def _narrower(parts: list[torch.Tensor], dim: int, origin: str):
    """`TensorSource.narrow` over shards concatenated along `dim`: only the parts (and the part
    of each) that the slice covers are read from the mapped files."""
    ndim = parts[0].dim()
    cat_dim = dim % ndim

    def narrow(along: int, start: int, stop: int) -> TensorSource:
        along %= ndim
        if along == cat_dim:
            pieces, offset = [], 0
            for p in parts:
                lo, hi = max(start, offset), min(stop, offset + p.shape[along])
                if lo < hi:
                    pieces.append(p.narrow(along, lo - offset, hi - lo))
                offset += p.shape[along]
        else:
            pieces = [p.narrow(along, start, stop - start) for p in parts]
        shape = list(pieces[0].shape)
        shape[cat_dim] = sum(p.shape[cat_dim] for p in pieces)

        def load(dtype: torch.dtype) -> torch.Tensor:
            if len(pieces) == 1:
                return pieces[0].to(dtype).contiguous()
            return torch.cat([p.to(dtype) for p in pieces], dim=cat_dim)

        return TensorSource(tuple(shape), load, f"{origin}[{along}:{start}:{stop}]")

    return narrow
