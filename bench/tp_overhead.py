"""Tensor-parallel overhead on one machine: the same model as 1 rank and as N ranks.

Writes one random Llama-shaped model (Hugging Face safetensors, bfloat16 on disk) and runs it
under `torchrun --nproc-per-node W` for each W in --worlds. The ranks share the machine's cores
(W=1 gets every core, W=2 half each, as torchrun's OMP_NUM_THREADS would split them by hand), so
this measures what splitting costs, not what a second socket or GPU would add. Each run reports
prefill and greedy decode tokens/s, every rank's peak RSS, and the cost of one all-reduce of a
decode step's activation (one row of `dim` floats; a layer does two).

    python bench/tp_overhead.py [--dim 2048 --layers 16 --vocab 128256 --worlds 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---- one rank (run by torchrun) -----------------------------------------------------------------
def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def rank_main(path: str, out: str, prompt_len: int, decode: int, repeats: int) -> None:
    import torch
    import torch.distributed as dist

    from llama3.generation.generate import generate
    from llama3.generation.params import SamplingParams
    from llama3.loader import load
    from llama3.parallel import group

    tp = group.init(device="cpu") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    rank = tp.rank if tp else 0
    lm = load(path, dtype="float32", tensor_parallel=tp)
    model, tok = lm.model, lm.tokenizer
    # private memory is the rank's own weights; file pages of the mapped checkpoint are shared
    # page cache (a column-split tensor touches every page of its rows) and count in RSS too
    anon_loaded, file_loaded = _status("RssAnon:"), _status("RssFile:")
    if tp:
        tp.lockstep = True
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(1000, 30000, (prompt_len,), generator=g).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=decode, ignore_eos=True)
    prefill_s, decode_s = [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(torch.tensor([prompt]))
            t1 = time.perf_counter()
            generate(model, tok, [prompt[:8]], params, max_seq_len=prompt_len + decode + 8)
            t2 = time.perf_counter()
        prefill_s.append(t1 - t0)
        decode_s.append(t2 - t1)
    allreduce_us = None
    if tp:
        row = torch.randn(1, model.params.dim)
        for _ in range(50):
            dist.all_reduce(row)
        t0 = time.perf_counter()
        n = 2000
        for _ in range(n):
            dist.all_reduce(row)
        allreduce_us = (time.perf_counter() - t0) / n * 1e6
    got = {
        "rank": rank,
        "threads": torch.get_num_threads(),
        "prefill_tok_s": prompt_len / min(prefill_s[1:]),
        # decode time includes the 8-token prompt's prefill: small next to `decode` steps
        "decode_tok_s": decode / min(decode_s[1:]),
        "anon_loaded": anon_loaded,
        "file_loaded": file_loaded,
        "peak_rss": _status("VmHWM:"),
        "params_local": sum(p.numel() for p in model.parameters()),
        "allreduce_us": allreduce_us,
        "layers": model.params.n_layers,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(got))
    if tp:
        group.shutdown()


# ---- the driver -----------------------------------------------------------------------------
def write_model(root: Path, dim: int, layers: int, vocab: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO / "tests"))
    import factory  # the test suite's HF writer (with the real Llama 3 tokenizer files)

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=4 * dim,
        num_hidden_layers=layers,
        num_attention_heads=dim // 64,
        num_key_value_heads=max(1, dim // 256),
        rope_theta=500000.0,
        bos_token_id=128000,
        eos_token_id=[128001, 128009],
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        m = LlamaForCausalLM(cfg)
    m = m.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    return factory.write_hf(m, root, "3.2")


def run_world(model: Path, world: int, args: argparse.Namespace) -> list[dict]:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // world)), PYTHONPATH=str(REPO))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(world),
            "--master-port",
            str(29600 + world),
            __file__,
            "--rank-job",
            str(model),
            out,
            "--prompt-len",
            str(args.prompt_len),
            "--decode",
            str(args.decode),
            "--repeats",
            str(args.repeats),
        ]
        subprocess.run(cmd, check=True, env=env)
        return [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]


def isa() -> str:
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    names = [f for f in ("avx512f", "avx512_vnni", "amx_tile", "avx2", "fma") if f" {f}" in flags]
    return "+".join(names) or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", type=Path, help="an existing checkpoint instead of a random one")
    ap.add_argument("--rank-job", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_job:
        rank_main(*args.rank_job, args.prompt_len, args.decode, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_model(Path(tmp), args.dim, args.layers, args.vocab)
        print(
            f"# model {model}  dim {args.dim} layers {args.layers} vocab {args.vocab}; "
            f"{os.cpu_count()} cores, {isa()}",
            flush=True,
        )
        rows = {int(w): run_world(model, int(w), args) for w in args.worlds.split(",")}
    base = rows[min(rows)][0]
    print(
        "| ranks | threads/rank | prefill tok/s | decode tok/s | decode vs 1 rank | params/rank "
        "| private after load/rank (GiB) | mapped file pages/rank (GiB) | peak RSS/rank (GiB) "
        "| all-reduce [1,dim] (us) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w, ranks in rows.items():
        r0 = ranks[0]
        rss, anon, mapped = (
            " / ".join(f"{r[k] / 2**30:.2f}" for r in ranks)
            for k in ("peak_rss", "anon_loaded", "file_loaded")
        )
        ar = f"{r0['allreduce_us']:.0f}" if r0["allreduce_us"] is not None else "-"
        print(
            f"| {w} | {r0['threads']} | {r0['prefill_tok_s']:.0f} | {r0['decode_tok_s']:.1f} "
            f"| {r0['decode_tok_s'] / base['decode_tok_s']:.2f}x | {r0['params_local'] / 1e6:.0f} M "
            f"| {anon} | {mapped} | {rss} | {ar} |"
        )


if __name__ == "__main__":
    main()
