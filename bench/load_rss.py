"""Peak resident memory while loading, relative to the weights' size in the target dtype.

Writes one synthetic Llama-shaped model (random weights) as a Hugging Face safetensors directory
(float32 and bfloat16), a Meta directory (2 shards) and GGUF files (F32, F16, Q8_0), then loads each
in a fresh process with `read_checkpoint` + `build_model` and reports (peak RSS - RSS before
loading) / (weights in float32).

    python bench/load_rss.py [--dim 1024 --layers 12 --vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, torch
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from llama3.checkpoint import read_checkpoint
from llama3.model.build import build_model
import llama3.quant.gguf_blocks
before = status("VmRSS:")
model = build_model(read_checkpoint(sys.argv[1]), dtype=torch.float32)
nbytes = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in model.state_dict().values()}.values())
print(before, status("VmHWM:"), status("VmRSS:"), nbytes)
"""


def write_models(root: Path, dim: int, layers: int, vocab: int) -> dict[str, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import factory  # the test suite's independent Meta / GGUF writers

    hidden = (int(2 * 4 * dim / 3) + 31) // 32 * 32  # Meta's rule with multiple_of 32
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=dim // 64,
        num_key_value_heads=max(1, dim // 256),
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    out = {}
    out["hf-float32"] = root / "hf32"
    model.save_pretrained(out["hf-float32"])
    out["hf-bfloat16"] = root / "hf16"
    model.to(torch.bfloat16).save_pretrained(out["hf-bfloat16"])
    model.float()
    (root / "meta").mkdir()
    sd = factory.meta_state_dict(model)
    params = {
        "dim": dim,
        "n_layers": layers,
        "n_heads": dim // 64,
        "n_kv_heads": max(1, dim // 256),
        "vocab_size": vocab,
        "ffn_dim_multiplier": None,
        "multiple_of": 32,
        "norm_eps": 1e-5,
        "rope_theta": 500000.0,
    }
    (root / "meta" / "params.json").write_text(json.dumps(params))
    torch.save(sd, root / "meta" / "consolidated.00.pth")
    out["meta-float32"] = root / "meta"
    for q in ("F32", "F16", "Q8_0"):
        p = root / f"model-{q}.gguf"
        factory.write_gguf(model, p, "3.0", q, tokenizer=False)
        out[f"gguf-{q}"] = p
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = write_models(Path(tmp), a.dim, a.layers, a.vocab)
        print(f"{'format':<14} {'weights (fp32)':>15} {'peak - before':>15} {'ratio':>7}")
        for name, path in models.items():
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
            )
            before, peak, _after, nbytes = map(int, res.stdout.split())
            print(
                f"{name:<14} {nbytes / 2**20:>12.0f} MiB {(peak - before) / 2**20:>12.0f} MiB {(peak - before) / nbytes:>7.2f}"
            )


if __name__ == "__main__":
    main()
