"""The doctor behind `llama3 inspect`: what a checkpoint is, what running it costs, its pitfalls.

Owns building the report as plain data (JSON-ready dicts): format and files, architecture, parameter
count and stored dtypes, memory for the weights and the KV cache, tokenizer, stop set with the
source of each id, chat template with a rendered example, and findings (each with its fix) for the
Llama 3 pitfalls it can detect. Reads shapes, metadata and a few embedding rows only, never the
whole weights. Does not print; `llama3.cli.inspect` renders the report.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from . import kernels
from .checkpoint import LoadedCheckpoint, read_checkpoint
from .errors import Llama3Error
from .loader import KV_MEMORY_FRACTION, check_vocab, default_max_seq_len, load_tokenizer_for
from .tokenizer.base import BaseTokenizer
from .tokenizer.hf import LLAMA3_DEFAULTS, is_llama3_vocab
from .utils.device import available_memory, resolve_device, resolve_dtype

Report = dict[str, Any]

EXAMPLE_DIALOG: list[dict[str, str]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
_RESERVED = re.compile(r"^<\|reserved_special_token_\d+\|>$")
_EOT = "<|eot_id|>"
#: an embedding row this many times smaller than a typical one was never trained
_UNTRAINED_RATIO = 1e-3


@dataclass(frozen=True)
class Finding:
    """One detected problem. `level` "error": llama3 itself cannot load or chat with the model."""

    code: str
    message: str
    fix: str
    level: Literal["warning", "error"] = "warning"


def inspect_model(
    path: str | os.PathLike,
    *,
    max_seq_len: int | None = None,
    max_batch_size: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
) -> Report:
    """The whole report for the checkpoint at `path` (reader errors propagate as Llama3Error);
    `quantize` as `Llama.load` takes it, for the "runs as" line."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ckpt = read_checkpoint(path)
    findings: list[Finding] = []
    report: Report = {
        "model": model_section(ckpt),
        "config": config_section(ckpt),
        "weights": weights_section(ckpt, dt),
    }
    report["weights"]["runs_as"] = runs_as(ckpt, quantize, dev, dt, findings)
    report["kernels"] = kernels.status() if dev.type == "cpu" else None
    report["memory"] = memory_section(ckpt, max_seq_len, max_batch_size, dev, dt, findings)
    findings += shape_findings(ckpt)
    try:
        tok: BaseTokenizer | None = load_tokenizer_for(ckpt)
    except Llama3Error as e:
        tok = None
        findings.append(Finding("tokenizer", e.message, e.hint or "", "error"))
    report["tokenizer"] = tokenizer_section(ckpt, tok, findings) if tok else None
    report["stop_tokens"] = stop_section(tok) if tok else []
    report["chat"] = chat_section(ckpt, tok, findings) if tok else None
    report["findings"] = [asdict(f) for f in findings]
    return report


# ---- model, config, weights ---------------------------------------------------------------------
def model_section(ckpt: LoadedCheckpoint) -> dict[str, Any]:
    files = [{"path": str(f), "bytes": _size(f)} for f in ckpt.files]
    return {
        "path": str(ckpt.path),
        "format": ckpt.format,
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
        "name": _model_name(ckpt),
    }


def config_section(ckpt: LoadedCheckpoint) -> dict[str, Any]:
    a = ckpt.args
    scaling: dict[str, Any] | None = None
    if a.rope_scaling is not None:
        scaling = {"type": "llama3", **asdict(a.rope_scaling)}
    elif ckpt.rope_freq_factors is not None:
        # GGUF stores Llama 3.1 scaling as per-frequency divisors instead of the four numbers.
        scaling = {
            "type": "rope_freqs",
            "factor": round(float(ckpt.rope_freq_factors.max()), 4),
        }
    return {
        "dim": a.dim,
        "n_layers": a.n_layers,
        "n_heads": a.n_heads,
        "n_kv_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "hidden_dim": a.hidden_dim,
        "vocab_size": a.vocab_size,
        "norm_eps": a.norm_eps,
        "rope_theta": a.rope_theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": a.tie_word_embeddings,
        "trained_context": a.max_position_embeddings,
    }


def weights_section(ckpt: LoadedCheckpoint, dtype: torch.dtype) -> dict[str, Any]:
    if ckpt.quantization is not None:  # stored as it runs: the file's bytes are the weights'
        return {
            "parameters": ckpt.args.num_parameters(),
            "stored_dtypes": dict(sorted(stored_dtypes(ckpt).items())),
            "dtype": ckpt.quantization.name,
            "bytes": sum(f.stat().st_size for f in ckpt.files),
        }
    params = sum(math.prod(t.shape) for t in ckpt.tensors.values())
    return {
        "parameters": params,
        "stored_dtypes": dict(sorted(stored_dtypes(ckpt).items())),
        "dtype": _dtype_name(dtype),
        "bytes": params * _itemsize(dtype),
    }


def runs_as(
    ckpt: LoadedCheckpoint,
    quantize: str | None,
    device: torch.device,
    dtype: torch.dtype,
    findings: list[Finding],
) -> str:
    """What a load with these options runs the weights as, and why (`quant.default.choose`)."""
    from .quant.default import choose

    try:
        return choose(ckpt, quantize, device, dtype).reason
    except Llama3Error as e:
        findings.append(Finding("weights", e.message, e.hint or "", "error"))
        return "cannot load: " + e.message


def stored_dtypes(ckpt: LoadedCheckpoint) -> Counter[str]:
    """How many tensors are stored in each dtype (GGUF: each ggml type, e.g. Q4_1)."""
    counts: Counter[str] = Counter()
    if ckpt.format == "gguf":
        from .quant.gguf_blocks import type_name

        counts.update(type_name(int(t.ggml_type)) for t in ckpt.tensors.values())
    elif ckpt.format in ("hf", "quantized"):
        for f in ckpt.files:
            if f.suffix == ".safetensors":
                counts.update(_safetensors_dtypes(f))
    else:  # Meta shards share dtypes; the first one tells (memory-mapped, nothing read)
        pth = [f for f in ckpt.files if f.suffix == ".pth"]
        sd = torch.load(pth[0], map_location="cpu", mmap=True, weights_only=True)
        counts.update(
            _dtype_name(t.dtype)
            for k, t in sd.items()
            if isinstance(t, torch.Tensor) and k in ckpt.tensors
        )
    return counts


def shape_findings(ckpt: LoadedCheckpoint) -> list[Finding]:
    """The shape check the loader runs, as a finding instead of an exception."""
    from .errors import CheckpointError
    from .model.build import check_tensors, expected_shapes
    from .model.transformer import Transformer

    with torch.device("meta"):
        expected = expected_shapes(Transformer(ckpt.args))
    if ckpt.args.tie_word_embeddings:
        expected.pop("output.weight", None)
    if ckpt.quantization is not None:
        from .quant.apply import saved_shapes

        expected = saved_shapes(expected, ckpt.quantization)
    try:
        check_tensors(ckpt, expected)
    except CheckpointError as e:
        return [Finding("weights", e.message, e.hint or "", "error")]
    return []


# ---- memory --------------------------------------------------------------------------------------
def memory_section(
    ckpt: LoadedCheckpoint,
    max_seq_len: int | None,
    max_batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    findings: list[Finding],
) -> dict[str, Any]:
    a = ckpt.args
    per_token = a.kv_bytes_per_token(_itemsize(dtype)) * max_batch_size
    free = available_memory(device)
    budget = int(free * KV_MEMORY_FRACTION)
    default = default_max_seq_len(a, max_batch_size, dtype, device)
    chosen = max_seq_len or default
    trained = a.max_position_embeddings
    need, allowed = format_bytes(per_token * trained), format_bytes(budget)
    if max_seq_len is None and default < trained:
        findings.append(
            Finding(
                "context",
                f"the trained context of {trained} tokens needs {need} of KV cache at batch size "
                f"{max_batch_size} in {_dtype_name(dtype)}, more than the {allowed} llama3 allows "
                f"(half the free {device.type} memory); llama3 uses {default} tokens instead "
                "(engines that size the cache from max_position_embeddings fail to start or run "
                "out of memory)",
                f"pass --max-seq-len N to choose the context (here at most {default}); "
                "elsewhere, set the engine's context length (vLLM --max-model-len, llama.cpp -c)",
            )
        )
    if max_seq_len is not None and max_seq_len > trained:
        findings.append(
            Finding(
                "context",
                f"--max-seq-len {max_seq_len} is beyond the {trained} tokens the model was trained "
                "for; positions past that are out of distribution and quality degrades",
                f"use --max-seq-len {trained} or less",
            )
        )
    if max_seq_len is not None and per_token * chosen > budget:
        findings.append(
            Finding(
                "context",
                f"the KV cache for --max-seq-len {chosen} needs "
                f"{format_bytes(per_token * chosen)}, "
                f"more than the {allowed} llama3 plans for (half the free {device.type} memory)",
                f"use --max-seq-len {default} or less, or a smaller --max-batch-size",
            )
        )
    return {
        "device": str(device),
        "dtype": _dtype_name(dtype),
        "batch_size": max_batch_size,
        "kv_bytes_per_token": per_token,
        "context": chosen,
        "context_source": "--max-seq-len" if max_seq_len else "the default (what fits in memory)",
        "kv_cache_bytes": per_token * chosen,
        "trained_context": trained,
        "trained_kv_cache_bytes": per_token * trained,
        "free_bytes": free,
        "kv_budget_bytes": budget,
    }


# ---- tokenizer, stop set -------------------------------------------------------------------------
def tokenizer_section(
    ckpt: LoadedCheckpoint, tok: BaseTokenizer, findings: list[Finding]
) -> dict[str, Any]:
    specials = tok.special_tokens
    named = {
        t: i for t, i in sorted(specials.items(), key=lambda kv: kv[1]) if not _RESERVED.match(t)
    }
    llama3 = is_llama3_vocab(specials)
    findings += vocab_findings(ckpt, tok)
    findings += eot_findings(ckpt, tok)
    findings += tokenizer_warning_findings(
        tok, llama3, covered_eot=any(f.code == "eot" for f in findings)
    )
    return {
        "kind": _tokenizer_kind(ckpt, tok),
        "source": str(ckpt.tokenizer_source) if ckpt.tokenizer_source else "bundled",
        "n_words": tok.n_words,
        "llama3_vocab": llama3,
        "bos": _token(tok, tok.bos_id),
        "eos": _token(tok, tok.eos_id),
        "add_bos": bool(tok.add_bos and tok.bos_id is not None),
        "special_tokens": named,
        "reserved_special_tokens": len(specials) - len(named),
        "warnings": list(getattr(tok, "warnings", [])),
    }


def stop_section(tok: BaseTokenizer) -> list[dict[str, Any]]:
    return [
        {"id": i, "text": _piece(tok, i), "sources": srcs}
        for i, srcs in tok.stop_token_sources.items()
    ]


def vocab_findings(ckpt: LoadedCheckpoint, tok: BaseTokenizer) -> list[Finding]:
    v, n = ckpt.args.vocab_size, tok.n_words
    if v == n:
        return []
    try:
        check_vocab(ckpt, tok)
    except Llama3Error as e:
        return [Finding("vocab", e.message + "; llama3 refuses to load it", e.hint or "", "error")]
    return [
        Finding(
            "vocab",
            f"the model's vocab_size is {v} but the tokenizer has {n} tokens; the {v - n} extra "
            "embedding rows are padding the tokenizer never produces",
            "nothing to do if the padding is intended; otherwise use the tokenizer shipped "
            "with these weights",
        )
    ]


def eot_findings(ckpt: LoadedCheckpoint, tok: BaseTokenizer) -> list[Finding]:
    """A Llama 3 vocabulary whose files do not name <|eot_id|> as an end token (PEERS §6.1)."""
    eot = tok.special_tokens.get(_EOT)
    if eot is None or not is_llama3_vocab(tok.special_tokens):
        return []
    sources = tok.stop_token_sources.get(eot, [])
    if any(s != LLAMA3_DEFAULTS for s in sources):
        return []
    eos = _piece(tok, tok.eos_id) if tok.eos_id is not None else "none"
    added = "llama3 adds it to the stop set itself" if sources else "llama3 does not stop on it"
    if ckpt.format == "gguf":
        said = f"the GGUF eos is {eos} ({tok.eos_id}) and it names no eot token"
        fix = (
            'gguf-new-metadata IN.gguf OUT.gguf --special-token eot "<|eot_id|>" (from the gguf '
            "package); instruct GGUFs should also use it as eos"
        )
    else:
        gen = Path(ckpt.path) / "generation_config.json"
        gen_ids = ckpt.generation_config.get("eos_token_id")
        said = f"tokenizer_config.json names {eos} as eos and " + (
            f"generation_config.json eos_token_id is {gen_ids}"
            if gen.is_file()
            else "there is no generation_config.json"
        )
        fix = (
            f'put "eos_token_id": [{tok.special_tokens.get("<|end_of_text|>")}, {eot}] '
            "(3.1+: also <|eom_id|> 128008) in generation_config.json"
        )
    return [
        Finding(
            "eot",
            f"the model's files do not list {_EOT} ({eot}) as an end token: {said}; other engines "
            f"will run past the end of the assistant's turn; {added}",
            fix,
        )
    ]


def tokenizer_warning_findings(
    tok: BaseTokenizer, llama3: bool, *, covered_eot: bool
) -> list[Finding]:
    """The tokenizer's own load-time warnings (unknown GGUF pre-tokenizer, ...) with fixes."""
    out = []
    for w in getattr(tok, "warnings", []):
        if covered_eot and "no eot token" in w:
            continue
        if "pre-tokenizer" in w:
            name = "llama-bpe" if llama3 else "<the model's pre-tokenizer>"
            out.append(
                Finding(
                    "pre-tokenizer",
                    w,
                    f"gguf-new-metadata IN.gguf OUT.gguf --pre-tokenizer {name} (from the gguf "
                    "package), or convert again with a current llama.cpp convert_hf_to_gguf.py",
                )
            )
        else:
            out.append(
                Finding("tokenizer", w, "fix the tokenizer files or convert the model again")
            )
    return out


# ---- chat template -------------------------------------------------------------------------------
def chat_section(
    ckpt: LoadedCheckpoint, tok: BaseTokenizer, findings: list[Finding]
) -> dict[str, Any]:
    from .tokenizer import chat_formatter

    source, template = template_source(ckpt, tok)
    section: dict[str, Any] = {"source": source, "template": template, "example": None}
    try:
        formatter = chat_formatter(tok)
        try:
            dialog = EXAMPLE_DIALOG
            ids = formatter.encode_dialog_prompt(dialog)
        except Llama3Error:  # some templates refuse a system message; a user turn must do
            dialog = EXAMPLE_DIALOG[1:]
            ids = formatter.encode_dialog_prompt(dialog)
    except Llama3Error as e:
        if template is not None:  # no template at all is a base model, not a problem
            findings.append(Finding("template", e.message, e.hint or "", "error"))
        section["unavailable"] = e.message
        return section
    section["example"] = {"dialog": dialog, "text": tok.decode(ids), "n_tokens": len(ids)}
    findings += bos_findings(tok, formatter, dialog, ids)
    findings += base_model_findings(ckpt, tok, ids, template is not None)
    return section


def template_source(ckpt: LoadedCheckpoint, tok: BaseTokenizer) -> tuple[str, str | None]:
    """Where the chat format comes from, and the Jinja template text (None for Meta's layout)."""
    template = tok.chat_template
    if not template:
        meta = "Meta's Llama 3 chat format (built in)"
        if is_llama3_vocab(tok.special_tokens):
            return (meta if ckpt.format == "meta" else meta + "; no template shipped"), None
        return "none (no chat template shipped)", None
    if ckpt.gguf_vocabulary:
        return "GGUF tokenizer.chat_template", template
    d = Path(ckpt.tokenizer_source or ckpt.path)
    cfg = d / "tokenizer_config.json"
    if cfg.is_file() and "chat_template" in json.loads(cfg.read_text(encoding="utf-8")):
        return "tokenizer_config.json", template
    for name in ("chat_template.jinja", "chat_template.json"):
        if (d / name).is_file():
            return name, template
    return "tokenizer", template


def bos_findings(
    tok: BaseTokenizer, formatter: Any, dialog: list[dict[str, str]], ids: list[int]
) -> list[Finding]:
    """A template that emits BOS while the tokenizer adds one too doubles it (PEERS §6.5)."""
    bos = tok.bos_id
    if bos is None:
        return []
    if ids[:2] == [bos, bos]:
        return [
            Finding(
                "double-bos",
                "the example prompt starts with two BOS tokens",
                "remove {{ bos_token }} from the chat template",
                "error",
            )
        ]
    render = getattr(formatter, "render", None)
    if render is None or not tok.add_bos:
        return []
    text = render(dialog)
    bos_text = _piece(tok, bos)
    if not text.startswith(bos_text):
        return []
    return [
        Finding(
            "double-bos",
            f"the chat template emits {bos_text} and the tokenizer adds BOS too, so engines that "
            "tokenize the rendered template with add_special_tokens=True start with two BOS "
            "tokens; llama3 drops the duplicate",
            "elsewhere, tokenize rendered chat prompts with add_special_tokens=False (or remove "
            "{{ bos_token }} from the template)",
        )
    ]


def base_model_findings(
    ckpt: LoadedCheckpoint, tok: BaseTokenizer, ids: list[int], shipped_template: bool
) -> list[Finding]:
    """A base model chatting: the template's special tokens have untrained embeddings (PEERS §6.4).

    Names and metadata are not trusted (fine-tunes keep base names); the weights tell: a base Llama
    3 never saw <|start_header_id|> or <|eot_id|>, and their embedding rows stay near zero.
    """
    specials = set(tok.special_tokens.values()) - {tok.bos_id}
    probe = sorted({i for i in ids if i in specials})
    if not probe:
        return []
    ordinary = [i for i in _spread(min(tok.n_words, ckpt.args.vocab_size), 48) if i not in specials]
    rows = embedding_rows(ckpt, probe + ordinary)
    if rows is None:
        return []
    norms = rows.float().norm(dim=1)
    typical = float(norms[len(probe) :].median())
    untrained = [
        i for i, n in zip(probe, norms[: len(probe)].tolist()) if n <= typical * _UNTRAINED_RATIO
    ]
    if typical == 0 or not untrained:
        return []
    names = ", ".join(_piece(tok, i) for i in untrained)
    what = "a chat template ships with" if shipped_template else "chat would run on"
    return [
        Finding(
            "base-model",
            f"{what} what looks like a base (not instruct) model: the embeddings of {names} "
            "were never trained, so chat replies are garbage",
            "use plain completion (llama3 generate) with a base model, or the instruct model "
            "for chat",
        )
    ]


def embedding_rows(ckpt: LoadedCheckpoint, ids: list[int]) -> torch.Tensor | None:
    """Rows `ids` of the token embedding, read without materialising the matrix (None if not)."""
    src = ckpt.tensors.get("tok_embeddings.weight")
    if src is None or len(src.shape) != 2 or max(ids) >= src.shape[0]:
        return None
    try:
        if ckpt.format == "gguf":
            return _gguf_rows(src, ids)
        if ckpt.format == "hf":
            return _safetensors_rows(ckpt, ids, "model.embed_tokens.weight")
        if ckpt.format == "quantized":
            return _safetensors_rows(ckpt, ids, "tok_embeddings.weight")
        return _meta_rows(ckpt, ids, src.shape[0])
    except (Llama3Error, OSError, RuntimeError, ValueError):
        return None


def _gguf_rows(src: Any, ids: list[int]) -> torch.Tensor:
    import numpy as np

    from .quant.gguf_blocks import dequantize

    rows, cols = src.shape
    flat = np.asarray(src.raw).reshape(-1).view(np.uint8)
    width = flat.size // rows
    return torch.cat(
        [dequantize(flat[i * width : (i + 1) * width], src.ggml_type, (1, cols)) for i in ids]
    )


def _safetensors_rows(ckpt: LoadedCheckpoint, ids: list[int], name: str) -> torch.Tensor | None:
    from safetensors import safe_open

    for f in ckpt.files:
        if f.suffix != ".safetensors":
            continue
        with safe_open(str(f), framework="pt") as h:
            if name in h.keys():
                s = h.get_slice(name)
                return torch.cat([s[i : i + 1] for i in ids])
    return None


def _meta_rows(ckpt: LoadedCheckpoint, ids: list[int], n_rows: int) -> torch.Tensor:
    # Model-parallel shards split the embedding by rows (VocabParallelEmbedding), in file order.
    shards = [f for f in ckpt.files if f.suffix == ".pth"]
    per = n_rows // len(shards)
    opened: dict[int, dict[str, torch.Tensor]] = {}
    out = []
    for i in ids:
        k = i // per
        if k not in opened:
            opened[k] = torch.load(shards[k], map_location="cpu", mmap=True, weights_only=True)
        out.append(opened[k]["tok_embeddings.weight"][i - k * per].unsqueeze(0).float())
    return torch.cat(out)


# ---- helpers -------------------------------------------------------------------------------------
def _model_name(ckpt: LoadedCheckpoint) -> str:
    md = ckpt.metadata
    if ckpt.format == "gguf" and md.get("general.name"):
        return str(md["general.name"])
    if ckpt.format == "hf" and md.get("_name_or_path"):
        return str(md["_name_or_path"])
    p = Path(ckpt.path)
    return (p.parent.name if p.name == "original" else p.name) or str(p)


def _tokenizer_kind(ckpt: LoadedCheckpoint, tok: BaseTokenizer) -> str:
    from .tokenizer.gguf_vocab import GGUFTokenizer
    from .tokenizer.tiktoken_bpe import Tokenizer

    if isinstance(tok, Tokenizer):
        where = "bundled" if ckpt.tokenizer_source is None else Path(tok.model_path).name
        return f"tiktoken BPE (Meta {where}, {tok.special_tokens_version} special-token names)"
    if isinstance(tok, GGUFTokenizer):
        model = ckpt.metadata.get("tokenizer.ggml.model", "?")
        return f"GGUF vocabulary ({model}, pre-tokenizer {tok.pre or 'none'!r})"
    return "Hugging Face tokenizer.json"


def _token(tok: BaseTokenizer, i: int | None) -> dict[str, Any] | None:
    return None if i is None else {"id": i, "text": _piece(tok, i)}


def _piece(tok: BaseTokenizer, i: int | None) -> str:
    if i is None:
        return ""
    try:
        return tok.id_to_piece(i)
    except Llama3Error:
        return f"<id {i}>"


def _spread(n: int, k: int) -> list[int]:
    """`k` ids spread evenly over [0, n), skipping the first few (often bytes / control tokens)."""
    start = min(n - 1, 256)
    return sorted({start + (n - 1 - start) * j // max(1, k - 1) for j in range(k)})


def _safetensors_dtypes(f: Path) -> Counter[str]:
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
    return Counter(
        names.get(v["dtype"], v["dtype"]) for k, v in header.items() if k != "__metadata__"
    )


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return 0


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
