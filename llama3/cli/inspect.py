"""`llama3 inspect [MODEL]`: the doctor's report as text, or as one JSON object with `--json`.

The report itself is built by `llama3.doctor` (data only); this module parses the flags and renders
it. Exit status 0, or 1 when a finding says llama3 itself cannot load or chat with the model.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import InvalidRequestError
from .args import add_model_arguments, resolve_model_path

#: template lines shown in the text report (the JSON carries the whole template)
TEMPLATE_LINES = 6
LINE_WIDTH = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_arg", nargs="?", metavar="MODEL", help="the model (same as --model)")
    add_model_arguments(p)
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=1,
        help="sequences the KV cache is planned for (default 1, as in chat)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def model_spec(args: argparse.Namespace) -> str | None:
    """MODEL or --model (both is fine when they agree)."""
    pos, opt = getattr(args, "model_arg", None), args.model
    if pos and opt and pos != opt:
        raise InvalidRequestError(
            f"two models given: {pos} and --model {opt}", "pass the model once", param="model"
        )
    return pos or opt


def run(args: argparse.Namespace) -> int:
    if args.max_batch_size < 1:
        raise InvalidRequestError(
            f"--max-batch-size must be at least 1, got {args.max_batch_size}", "use 1 or more"
        )
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise InvalidRequestError(
            f"--max-seq-len must be at least 2, got {args.max_seq_len}", "use 2 or more"
        )
    from ..doctor import inspect_model

    report = inspect_model(
        resolve_model_path(model_spec(args)),
        max_seq_len=args.max_seq_len,
        max_batch_size=args.max_batch_size,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
    )
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(render(report))
    return 1 if any(f["level"] == "error" for f in report["findings"]) else 0


# ---- text rendering ------------------------------------------------------------------------------
def render(r: dict[str, Any]) -> str:
    out: list[str] = []
    _model(out, r["model"])
    _config(out, r["config"])
    _weights(out, r["weights"])
    if r.get("kernels"):
        _kernels(out, r["kernels"])
    _memory(out, r["memory"])
    if r["tokenizer"]:
        _tokenizer(out, r["tokenizer"])
        _stops(out, r["stop_tokens"])
    if r["chat"]:
        _chat(out, r["chat"])
    _findings(out, r["findings"])
    return "\n".join(out)


def format_bytes(n: int) -> str:
    from ..doctor import format_bytes as fmt

    return fmt(n)


def _row(out: list[str], key: str, value: Any) -> None:
    out.append(f"  {key:<16}{value}")


def _model(out: list[str], m: dict[str, Any]) -> None:
    fmt = {
        "meta": "Meta native",
        "hf": "Hugging Face safetensors",
        "gguf": "GGUF (llama.cpp)",
        "quantized": "llama3 quantize output",
    }
    out.append(f"model: {m['name']}")
    _row(out, "path", m["path"])
    _row(
        out, "format", f"{fmt[m['format']]}, {len(m['files'])} file(s), {format_bytes(m['bytes'])}"
    )
    for f in m["files"]:
        _row(out, "", f"{f['path'].rsplit('/', 1)[-1]}  {format_bytes(f['bytes'])}")


def _config(out: list[str], c: dict[str, Any]) -> None:
    out.append("architecture:")
    _row(out, "dim", c["dim"])
    _row(out, "layers", c["n_layers"])
    _row(out, "heads", f"{c['n_heads']} (kv heads {c['n_kv_heads']}, head_dim {c['head_dim']})")
    _row(out, "hidden (FFN)", c["hidden_dim"])
    _row(out, "vocab_size", c["vocab_size"])
    _row(out, "norm eps", f"{c['norm_eps']:g}")
    _row(out, "rope theta", f"{c['rope_theta']:g}")
    s = c["rope_scaling"]
    if s is None:
        scaling = "none"
    elif s["type"] == "llama3":
        scaling = (
            f"llama3 (factor {s['factor']:g}, low/high freq {s['low_freq_factor']:g}/"
            f"{s['high_freq_factor']:g}, original context {s['original_max_position_embeddings']})"
        )
    else:
        scaling = f"per-frequency factors in rope_freqs.weight (max {s['factor']:g})"
    _row(out, "rope scaling", scaling)
    _row(out, "tied embeddings", "yes" if c["tie_word_embeddings"] else "no")
    _row(out, "trained context", c["trained_context"])


def _weights(out: list[str], w: dict[str, Any]) -> None:
    out.append("weights:")
    _row(out, "parameters", f"{w['parameters']:,} ({w['parameters'] / 1e9:.2f} B)")
    stored = ", ".join(f"{k} x{v}" for k, v in w["stored_dtypes"].items())
    _row(out, "stored as", f"{stored} (tensors)")
    _row(out, f"in {w['dtype']}", format_bytes(w["bytes"]))
    if w.get("runs_as"):
        _row(out, "runs as", w["runs_as"])


def _kernels(out: list[str], k: dict[str, Any]) -> None:
    if k["state"] == "off":
        out.append(f"native kernels: off ({k['reason']}); the portable PyTorch paths run")
        return
    when = "" if k["state"] == "built" else " (built at the next load, once)"
    out.append(f"native kernels: {k['state']}{when}, {k['isa']}")
    _row(out, "library", k["path"])


def _memory(out: list[str], m: dict[str, Any]) -> None:
    out.append(f"memory ({m['device']}, {m['dtype']}, batch size {m['batch_size']}):")
    _row(out, "KV per token", format_bytes(m["kv_bytes_per_token"]))
    _row(
        out,
        "KV at context",
        f"{format_bytes(m['kv_cache_bytes'])} for {m['context']} tokens, {m['context_source']}",
    )
    _row(
        out,
        "KV at trained",
        f"{format_bytes(m['trained_kv_cache_bytes'])} for {m['trained_context']} tokens",
    )
    _row(
        out,
        "free memory",
        f"{format_bytes(m['free_bytes'])} (KV budget {format_bytes(m['kv_budget_bytes'])})",
    )


def _tokenizer(out: list[str], t: dict[str, Any]) -> None:
    out.append("tokenizer:")
    _row(out, "kind", t["kind"])
    _row(out, "source", t["source"])
    _row(out, "vocabulary", f"{t['n_words']} tokens")
    for key in ("bos", "eos"):
        tok = t[key]
        _row(out, key.upper(), f"{tok['text']} ({tok['id']})" if tok else "none")
    _row(out, "adds BOS", "yes" if t["add_bos"] else "no")
    specials = ", ".join(f"{k} {v}" for k, v in t["special_tokens"].items())
    reserved = t["reserved_special_tokens"]
    if reserved:
        specials += f" (+{reserved} reserved)"
    out += _wrap(specials, f"  {'special tokens':<16}", " " * 18)


def _stops(out: list[str], stops: list[dict[str, Any]]) -> None:
    out.append("stop tokens:")
    for s in stops:
        out.append(f"  {s['id']:>8} {s['text']:<24} from {', '.join(s['sources'])}")
    if not stops:
        _row(out, "none", "generation ends only at max tokens or the context")


def _chat(out: list[str], c: dict[str, Any]) -> None:
    out.append(f"chat format: {c['source']}")
    if c["template"]:
        lines = c["template"].splitlines()
        for line in lines[:TEMPLATE_LINES]:
            cut = line if len(line) <= LINE_WIDTH - 4 else line[: LINE_WIDTH - 7] + "..."
            out.append(f"  | {cut}")
        if len(lines) > TEMPLATE_LINES:
            out.append(f"  | ... ({len(lines) - TEMPLATE_LINES} more lines)")
    ex = c["example"]
    if ex is None:
        _row(out, "example", c.get("unavailable", "none"))
        return
    out.append(f"  example (system + user, generation prompt): {ex['n_tokens']} tokens")
    for line in ex["text"].split("\n"):
        out.append(f"  > {line}")


def _findings(out: list[str], findings: list[dict[str, Any]]) -> None:
    if not findings:
        out.append("no problems found")
        return
    out.append(f"findings ({len(findings)}):")
    for f in findings:
        out += _wrap(f"{f['level']} [{f['code']}]: {f['message']}", "  ", "    ")
        out += _wrap(f"fix: {f['fix']}", "    ", "         ")


def _wrap(text: str, first: str, rest: str) -> list[str]:
    import textwrap

    return textwrap.wrap(
        text, LINE_WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    ) or [first]
