"""Peak resident memory of `llama3 convert`, against the largest output file and the model.

Writes one random Llama-shaped model (float32, no tokenizer) as a Meta directory, then runs each
conversion in a fresh process and reports peak RSS minus RSS before converting (after the imports),
beside the model's size, the largest output weight file and the largest tensor. A streamed
conversion stays near one output shard (Meta: torch.save takes a whole state dict) or a tensor or
two (HF, GGUF), whatever the model's size.

    python bench/convert_rss.py                      # ~2.0 GB model (dim 2048, 8 layers, vocab 32000)
    python bench/convert_rss.py --dim 512 --layers 4 --vocab 8192 --cases meta4,hf --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> (source: "meta" or an earlier case's output, --to, options for ConvertOptions.make)
CASES: dict[str, tuple[str, str, dict]] = {
    "meta4": ("meta", "meta", {"shards": 4}),
    "hf": ("meta", "hf", {"max_shard_size": "SHARD"}),
    "gguf-f32": ("meta", "gguf", {"dtype": "f32"}),
    "gguf-q8_0": ("meta", "gguf", {"dtype": "q8_0"}),
    "hf-to-meta2": ("hf", "meta", {"shards": 2}),
    "meta4-to-hf": ("meta4", "hf", {"max_shard_size": "SHARD"}),
    "gguf-to-hf-bf16": ("gguf-f32", "hf", {"dtype": "bf16", "max_shard_size": "SHARD"}),
}

CHILD = r"""
import json, sys
import gguf, numpy, safetensors, torch  # imported before the baseline, like the writers' own
from llama3.convert import ConvertOptions, convert
from llama3.convert import gguf_writer, hf_writer, meta_writer
from llama3.utils.memory import proc_kib_field
src, to, out, kw = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
before = proc_kib_field("/proc/self/status", "VmRSS")
result = convert(src, ConvertOptions.make(to, out, **kw))
peak = proc_kib_field("/proc/self/status", "VmHWM")
print(json.dumps({"before": before, "peak": peak, "seconds": result.seconds}))
"""


def write_random_meta(root: Path, dim: int, layers: int, vocab: int, seed: int = 0) -> Path:
    """A Meta directory (one consolidated.00.pth, float32) of a random Llama-shaped model:
    head_dim 64, a quarter as many kv heads, Meta's feed-forward rule with multiple_of 256."""
    import torch

    n_heads, n_kv = dim // 64, max(1, dim // 256)
    params = {
        "dim": dim,
        "n_layers": layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "vocab_size": vocab,
        "multiple_of": 256,
        "ffn_dim_multiplier": None,
        "norm_eps": 1e-5,
        "rope_theta": 500000.0,
    }
    hidden = (int(2 * 4 * dim / 3) + 255) // 256 * 256
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    sd = {"tok_embeddings.weight": rand(vocab, dim)}
    for i in range(layers):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = rand(dim, dim)
        sd[p + "attention.wk.weight"] = rand(n_kv * 64, dim)
        sd[p + "attention.wv.weight"] = rand(n_kv * 64, dim)
        sd[p + "attention.wo.weight"] = rand(dim, dim)
        sd[p + "feed_forward.w1.weight"] = rand(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = rand(dim, hidden)
        sd[p + "feed_forward.w3.weight"] = rand(hidden, dim)
        sd[p + "attention_norm.weight"] = torch.ones(dim)
        sd[p + "ffn_norm.weight"] = torch.ones(dim)
    sd["norm.weight"] = torch.ones(dim)
    sd["output.weight"] = rand(vocab, dim)
    out = root / "meta"
    out.mkdir()
    (out / "params.json").write_text(json.dumps(params))
    torch.save(sd, out / "consolidated.00.pth")
    return out


def _tensor_bytes(path: Path) -> tuple[int, int]:
    """(all weights, the largest tensor) in bytes, from the Meta source's own shapes."""
    from llama3.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    sizes = [4 * _numel(t.shape) for t in ckpt.tensors.values()]
    return sum(sizes), max(sizes)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _largest_file(out: Path) -> int:
    if out.is_file():
        return out.stat().st_size
    return max(f.stat().st_size for f in out.iterdir() if f.suffix in (".pth", ".safetensors"))


def measure(root: Path, dim: int, layers: int, vocab: int, cases: list[str], shard: str) -> dict:
    src = write_random_meta(root, dim, layers, vocab)
    model, tensor = _tensor_bytes(src)
    outputs = {"meta": src}
    results = {}
    for name in cases:
        from_, to, kw = CASES[name]
        if from_ not in outputs:
            raise SystemExit(f"case {name} needs case {from_} first (--cases order)")
        kw = {k: (shard if v == "SHARD" else v) for k, v in kw.items()}
        out = root / (f"{name}.gguf" if to == "gguf" else name)
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(outputs[from_]), to, str(out), json.dumps(kw)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if res.returncode:
            raise SystemExit(f"{name} failed:\n{res.stderr}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        outputs[name] = out
        results[name] = {
            "peak_minus_before": r["peak"] - r["before"],
            "largest_file": _largest_file(out),
            "seconds": round(r["seconds"], 2),
        }
    return {"model_bytes": model, "largest_tensor": tensor, "cases": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--max-shard-size", default="500MB", help="HF output files (default 500MB)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(Path(tmp), a.dim, a.layers, a.vocab, a.cases.split(","), a.max_shard_size)
    if a.json:
        print(json.dumps(r))
        return
    mib = 2**20
    print(
        f"model {r['model_bytes'] / mib:.0f} MiB float32, largest tensor "
        f"{r['largest_tensor'] / mib:.0f} MiB"
    )
    print(f"{'case':<16} {'peak - before':>14} {'largest file':>13} {'÷ model':>8} {'time':>7}")
    for name, c in r["cases"].items():
        print(
            f"{name:<16} {c['peak_minus_before'] / mib:>10.0f} MiB {c['largest_file'] / mib:>9.0f} MiB "
            f"{c['peak_minus_before'] / r['model_bytes']:>8.2f} {c['seconds']:>6.1f}s"
        )


if __name__ == "__main__":
    main()
