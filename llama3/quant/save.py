"""`save_quantized`: write a loaded, quantized model as a directory that loads back quantized,
with no float copy and no calibration: `quantization.json` (scheme, architecture, where it came
from), `model.safetensors` (int8/int4 codes and scales; embeddings and norms in float) and the
tokenizer (Meta's tokenizer.model, Hugging Face's tokenizer files, or a GGUF's vocabulary).

The directory is written beside its destination and renamed into place, so an interrupted run
never leaves a half-written checkpoint under the name a user asked for.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ..checkpoint.quantized import CONFIG, FORMAT, VERSION, WEIGHTS
from ..errors import InvalidRequestError
from .apply import QuantSpec
from .int8 import Int8Embedding

if TYPE_CHECKING:
    from ..loader import LoadedModel

GGUF_TOKENIZER = "gguf_tokenizer.json"
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def quantized_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the directory stores: float parameters as they are, quantized layers as their
    parts ("layers.0.attention.wqkv.codes", ...)."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        tensors = getattr(module, "tensors", None)
        if callable(tensors):
            state.update({f"{name}.{k}": v.contiguous() for k, v in tensors().items()})
    for name, p in model.named_parameters(remove_duplicate=False):
        if name != "output.weight":  # a tied head is stored quantized, under output.*
            state[name] = p.detach().contiguous()
    emb = model.tok_embeddings
    if isinstance(emb, Int8Embedding):  # stored as the float values its int8 rows hold
        state["tok_embeddings.weight"] = emb.dequantize().contiguous()
    if model.rope_freq_factors is not None:
        state["rope_freqs"] = model.rope_freq_factors.detach().contiguous()
    return state


def _tokenizer_files(lm: LoadedModel, out: Path) -> dict[str, Any]:
    ckpt = lm.checkpoint
    if ckpt.gguf_vocabulary:
        keys = {k: v for k, v in ckpt.metadata.items() if k.startswith("tokenizer.")}
        (out / GGUF_TOKENIZER).write_text(json.dumps(keys), "utf-8")
        return {"kind": "gguf", "file": GGUF_TOKENIZER}
    src = ckpt.tokenizer_source
    if src is not None and src.is_file():
        shutil.copyfile(src, out / "tokenizer.model")
        return {"kind": "tiktoken", "file": "tokenizer.model"}
    if src is not None:
        copied = [f for f in HF_TOKENIZER_FILES if (src / f).is_file()]
        for f in copied:
            shutil.copyfile(src / f, out / f)
        return {"kind": "hf", "files": copied}
    return {"kind": "bundled"}  # the Llama 3 tokenizer this package ships


def check_out_dir(out: Path) -> None:
    """`out` must be new or an empty directory: a checkpoint never overwrites anything."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidRequestError(
            f"{out} already exists and is not an empty directory",
            "pass a new directory to --out (nothing was written)",
            "out",
        )


def save_quantized(lm: LoadedModel, out: str | Path) -> Path:
    """Write `lm` (loaded with `quantize=...`) to the new directory `out`."""
    out = Path(out).expanduser()
    spec = _spec_of(lm.model)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = {
            "format": FORMAT,
            "version": VERSION,
            "scheme": spec.name,
            "source": str(lm.checkpoint.path),
            "source_format": lm.checkpoint.format,
            "args": dataclasses.asdict(lm.checkpoint.args),
            "generation_config": lm.checkpoint.generation_config,
            "tokenizer": _tokenizer_files(lm, tmp),
        }
        save_file(quantized_state(lm.model), tmp / WEIGHTS, metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is not a secret
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _spec_of(model: torch.nn.Module) -> QuantSpec:
    from .int4 import Int4Linear
    from .int8 import Int8Linear

    layer = model.layers[0].feed_forward.w2
    if isinstance(layer, Int8Linear):
        return QuantSpec(8)
    if isinstance(layer, Int4Linear):
        return QuantSpec(4, layer.group)
    raise InvalidRequestError(
        "the model is not quantized", "load it with quantize='int8' or 'int4' first", "quantize"
    )
