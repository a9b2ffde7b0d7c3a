"""Shared pieces for the `llama3 convert` tests: converting, running the CLI, logits probes and a
tiny model with as many kv heads as heads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
#: "<|begin_of_text|>The capital of France is a test"
TOKENS = torch.tensor([[128000, 791, 6864, 315, 9822, 374, 264, 1296]])


def our_logits(path: Path, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """Logits of the checkpoint at `path` through this project's reader and model (float32)."""
    from llama3.checkpoint import read_checkpoint
    from llama3.model.build import build_model

    model = build_model(read_checkpoint(path), dtype=torch.float32)
    # Fresh (64-byte aligned) copies of the weights: a float32 tensor mapped straight from a file
    # sits wherever the format put it, and the CPU GEMM's blocking, hence its rounding, depends on
    # the alignment (seen on AVX-512: 1.6e-6 apart for bit-identical weights).
    for p in model.parameters():
        p.data = p.data.clone()
    if model.params.tie_word_embeddings:
        model.tie_weights()
    return model(tokens)


def hf_logits(model, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.float()


def convert(src: Path, to: str, out: Path, **kw) -> Path:
    from llama3.convert import ConvertOptions
    from llama3.convert import convert as run

    run(src, ConvertOptions.make(to, out, **kw))
    return out


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "llama3", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def load_pth(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def wide_kv_model(n_heads: int = 8, n_kv_heads: int = 8, dim: int = 128, seed: int = 1):
    """A tiny model with as many kv heads as heads (the 70B case at MP 8: one kv head a shard)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden = 448  # Meta's rule for dim 128: int(1.3 * int(8 * 128 / 3)) = 443 -> multiple of 32
    cfg = LlamaConfig(
        vocab_size=128256,
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=[128001, 128009],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() == 2 else p.uniform_(0.8, 1.2)
    return model


def write_meta_any(model, out: Path, n_shards: int) -> Path:
    """factory.write_meta for a model of any size (its params.json states the factory's sizes)."""
    import factory

    factory.write_meta(model, out, "3.0", n_shards=n_shards)
    c = model.config
    params = json.loads((out / "params.json").read_text())
    params.update(
        dim=c.hidden_size, n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads
    )
    (out / "params.json").write_text(json.dumps(params))
    return out


#: text that exercises the pre-tokenizer: contractions, digit runs, spaces, newlines, non-ASCII
TRICKY_TEXT = "Hello, world! It's   a test\n\n  of 1234567 tokens — naïve café 🦙\tdon't\r\nend  "


def llama_cpp_model(path: Path):
    """llama.cpp itself (llama-cpp-python) on the GGUF file `path`, logits for every position."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, seed=0
    )


def llama_cpp_logits(llm, tokens: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(tokens)
    return torch.tensor(llm.scores[: len(tokens)])


def our_greedy(path: Path, prompt: list[int], n: int) -> list[int]:
    """`n` greedy tokens from this project's engine (Llama.load + complete) on `path`."""
    from llama3 import Llama, SamplingParams

    llm = Llama.load(path, device="cpu", dtype="float32", max_seq_len=64, max_batch_size=1)
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return llm.complete([prompt], params)[0].tokens


_CONVERTED: dict[tuple, Path] = {}


def converted(tiny, work: Path, variant: str, src: str, to: str, **kw) -> Path:
    """`tiny.path(variant, src)` converted `--to to` with options `kw`, once per session."""
    key = (work, variant, src, to, tuple(sorted(kw.items())))
    if key not in _CONVERTED:
        opts = "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
        name = f"{variant.replace('.', '')}-{src}-to-{to}{'-' + opts if opts else ''}"
        out = work / (f"{name}.gguf" if to == "gguf" else name)
        _CONVERTED[key] = convert(tiny.path(variant, src), to, out, **kw)
    return _CONVERTED[key]
