"""Batch-1 decode on a GPU against the memory-bandwidth bound: a Llama-3-8B-shaped model with random
weights, bfloat16 and int8, through the engine's public path (`Llama.compile` + `Llama.stream`).

For each mode it reports the compile time, the compiled step alone (tokens/s over consecutive
steps), the end-to-end decode rate of a 128-token greedy generation, the bytes of weights one token
reads, and both rates as a fraction of the bound: those bytes / the GPU's measured read bandwidth
(`llama3.bench.bandwidth.read_bandwidth` over a 4 GiB buffer). For bfloat16 it also times every
layer's projections alone as cuBLAS products replayed in one CUDA graph: what a decoder without
fusion could at best do. A check that the compiled step's logits match the eager model's is
part of each mode (`max_rel_diff`).

    PYTHONUNBUFFERED=1 python bench/gpu_decode.py --json out.json
    python bench/gpu_decode.py --device cpu --shape tiny     # the same code paths, for a smoke test

BENCHMARKS.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other bench scripts

from sampled_decode import sampler_at, stream_rate  # noqa: E402

from llama3.bench.bandwidth import read_bandwidth  # noqa: E402
from llama3.bench.ours import weight_bytes_per_token  # noqa: E402
from llama3.config import ModelArgs  # noqa: E402
from llama3.generation.llama import Llama  # noqa: E402
from llama3.generation.params import SamplingParams  # noqa: E402
from llama3.kernels import gpu_int8  # noqa: E402
from llama3.model.kv_cache import KVCache  # noqa: E402
from llama3.model.transformer import Transformer  # noqa: E402
from llama3.quant.apply import quantize_model  # noqa: E402
from llama3.quant.int8 import Int8Linear  # noqa: E402
from llama3.tokenizer import load_tokenizer  # noqa: E402

#: Meta's Llama-3-8B params.json
LLAMA3_8B = dict(
    dim=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    vocab_size=128256,
    multiple_of=1024,
    ffn_dim_multiplier=1.3,
    rope_theta=500000.0,
)
SHAPES = {
    "8b": LLAMA3_8B,
    # the same with 4 layers: a quick check (a short compile) of the per-token host work
    "8b-4layers": {**LLAMA3_8B, "n_layers": 4},
    "tiny": dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=64),
}
TOKENIZER = Path(__file__).resolve().parents[1] / "llama3" / "assets" / "tokenizer.model"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_model(args: ModelArgs, device: torch.device, dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args).to(dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
    model.requires_grad_(False)
    return model.eval()


def cublas_layers(model: Transformer, reps: int = 20) -> float | None:
    """Seconds for every layer's projections (and the head) as one-row cuBLAS products, replayed
    in a CUDA graph: no fusion, no launch cost. None off CUDA or for quantized layers."""
    device = model.device
    if device.type != "cuda":
        return None
    mats = []
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        for m in (a.wq, a.wk, a.wv, a.wo, f.w1, f.w3, f.w2):
            if not hasattr(m, "weight"):
                return None
            mats.append(m.weight)
    mats.append(model.output.weight)
    xs = {w.shape[1]: torch.randn(1, w.shape[1], device=device, dtype=w.dtype) for w in mats}
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for w in mats:  # warm cuBLAS up outside the capture
            torch.nn.functional.linear(xs[w.shape[1]], w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in mats:
            torch.nn.functional.linear(xs[w.shape[1]], w)
    graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def int8_shapes(model: Transformer) -> dict[tuple[int, int], Int8Linear]:
    """One int8 layer of each weight shape (out, in) in the model."""
    found: dict[tuple[int, int], Int8Linear] = {}
    for m in model.modules():
        if isinstance(m, Int8Linear) and getattr(m, "codes", None) is not None:
            found.setdefault(tuple(m.codes.shape), m)
    return found


def sweep_configs() -> list[gpu_int8.Config]:
    """Tiles with 8-32 codes per thread: every (rows, inputs, warps) in that range."""
    out = []
    for warps in (2, 4, 8):
        for bn in (1, 2, 4, 8, 16):
            for bk in (256, 512, 1024, 2048, 4096):
                if bn * bk // (32 * warps) in (8, 16, 32):
                    out.append(gpu_int8.Config(bn, bk, num_warps=warps))
    return out


def sweep_int8(model: Transformer) -> list[dict]:
    """Times the int8 one-row kernel over `sweep_configs` for each of the model's int8 shapes
    (L2 flushed between calls: `triton.testing.do_bench`), then the best three with codes
    converted instead of decoded from bits and with a pipelined loop; records the best of each
    shape in `gpu_int8.CONFIGS_BY_SHAPE` for the decode that follows. For reference, the same
    shape as a bfloat16 cuBLAS product and as Inductor's reduction over int8 codes."""
    from triton.testing import do_bench

    from llama3.quant.int8 import codes_as_float

    def us(fn) -> float:
        return do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3

    def inductor_product(x, codes, scale):
        return ((x.float() * codes_as_float(codes)).sum(-1) * scale).to(x.dtype)

    compiled = torch.compile(inductor_product, dynamic=False)
    rows = []
    for layer in int8_shapes(model).values():
        row = sweep_shape(layer.codes, layer.scale, model.dtype, us, compiled)
        rows.append(row)
        print(json.dumps({"sweep": row}), flush=True)
    return rows


def sweep_shape(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, us, compiled) -> dict:
    n, k = codes.shape
    x = torch.randn(1, k, device=codes.device, dtype=dtype)
    nbytes = codes.numel() + 4 * n
    shipped = gpu_int8.config_for(n, k)

    def kernel(cfg: gpu_int8.Config):
        return lambda: gpu_int8.launch(x, codes, scale, cfg)

    times = {cfg: us(kernel(cfg)) for cfg in sweep_configs()}
    for cfg in sorted(times, key=times.get)[:3]:
        for variant in (
            gpu_int8.Config(cfg.block_n, cfg.block_k, cfg.num_warps, 1, bits=False),
            gpu_int8.Config(cfg.block_n, cfg.block_k, cfg.num_warps, 3, bits=True),
        ):
            times[variant] = us(kernel(variant))
    ranked = sorted(times, key=times.get)
    gpu_int8.CONFIGS_BY_SHAPE[(n, k)] = ranked[0]
    w = torch.randn(n, k, device=codes.device, dtype=dtype)
    row = {
        "shape": [n, k],
        "int8_MB": nbytes / 1e6,
        "cublas_bf16_us": us(lambda: torch.nn.functional.linear(x, w)),
        "shipped": [str(shipped), times.get(shipped) or us(kernel(shipped))],
        "best": [[str(c), round(times[c], 2)] for c in ranked[:5]],
        "worst": [str(ranked[-1]), round(times[ranked[-1]], 2)],
    }
    try:
        row["inductor_int8_us"] = us(lambda: compiled(x, codes, scale))
    except Exception as e:
        row["inductor_error"] = f"{type(e).__name__}: {e}"
    row["best_TB_s"] = nbytes / times[ranked[0]] / 1e6
    row["cublas_bf16_TB_s"] = 2 * n * k / row["cublas_bf16_us"] / 1e6
    return row


def eager_step_logits(model: Transformer, prompt: list[int], max_seq_len: int) -> torch.Tensor:
    device = model.device
    cache = KVCache(model.params, 1, max_seq_len, device=device, dtype=model.dtype)
    toks = torch.tensor([prompt], device=device)
    model(toks[:, :-1], 0, cache)
    return model(toks[:, -1:], len(prompt) - 1, cache, last_only=True)[0, -1]


def top_kernels(step, n: int = 40) -> list[list]:
    """The GPU kernels one step spends most time in: [name, microseconds per step, calls]."""
    from torch.profiler import ProfilerActivity, profile

    reps = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows) / reps
    return [["total", total, sum(e.count for e in rows) // reps]] + [
        [e.key[:80], round(e.device_time_total / reps, 1), e.count // reps] for e in rows[:n]
    ]


def float32_reference(model: Transformer, prompt: list[int], max_seq_len: int) -> torch.Tensor:
    """The eager step's logits with every weight in float32: what bfloat16 approximates."""
    import copy

    wide = copy.deepcopy(model).float()
    try:
        return eager_step_logits(wide, prompt, max_seq_len).float()
    finally:
        del wide


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def measure(
    llm: Llama,
    prompt: list[int],
    new_tokens: int,
    steps: int,
    runs: int,
    f32: torch.Tensor | None,
    baseline_sampler: types.ModuleType | None = None,
) -> dict:
    device = llm.model.device
    out: dict = {}
    ref = eager_step_logits(llm.model, prompt, llm.max_seq_len).float()
    if f32 is not None:
        out["eager_rel_err_vs_float32"] = rel_err(ref, f32)
    t = time.perf_counter()
    try:
        out["compile_s"] = llm.compile([1])
    except Exception as e:  # report it and keep the eager figures
        out["compile_error"] = f"{type(e).__name__}: {e}"
    decoder = llm._decoder
    if decoder is not None:
        # the compiled step's logits against the eager model's at the same position
        cache = decoder.cache_for(1)
        toks = torch.tensor([prompt], device=device)
        llm.model(toks[:, :-1], 0, cache)
        got = decoder.step(toks[:, -1:], len(prompt) - 1)[0, -1].float()
        out["max_rel_diff"] = rel_err(got, ref)
        out["same_argmax"] = bool(got.argmax() == ref.argmax())
        if f32 is not None:
            out["compiled_rel_err_vs_float32"] = rel_err(got, f32)
        tok = toks[:, -1:]
        for pos in range(len(prompt), len(prompt) + 5):  # CUDA graphs record on early calls
            decoder.step(tok, pos)
        rates = []
        for _ in range(runs):
            sync(device)
            t = time.perf_counter()
            for pos in range(len(prompt), len(prompt) + steps):
                decoder.step(tok, pos)
            sync(device)
            rates.append(steps / (time.perf_counter() - t))
        out["step_tok_s"] = statistics.median(rates)
        if device.type == "cuda":
            out["top_kernels"] = top_kernels(lambda: decoder.step(tok, len(prompt)))
    out["setup_s"] = time.perf_counter() - t
    greedy = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    # Meta's defaults (temperature 0.6, top-p 0.9), seeded: rows sampled on the host each step
    sampled = SamplingParams(max_tokens=new_tokens, seed=0, ignore_eos=True)
    cases = [("decode", greedy, None), ("decode_sampled", sampled, None)]
    if baseline_sampler is not None:  # the same loop with the sampler of another revision
        cases.append(("decode_sampled_baseline", sampled, baseline_sampler))
    for key, params, sampler in cases:
        # the first run warms the eager prefill up
        rates = [stream_rate(llm, prompt, params, sampler) for _ in range(runs + 1)]
        out[f"{key}_tok_s"] = statistics.median(rates[1:])
        out[f"{key}_tok_s_min_max"] = [min(rates[1:]), max(rates[1:])]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--modes", default="bfloat16,int8", help="bfloat16 and/or int8, in order")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100, help="compiled steps timed in a row")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--bandwidth-gib", type=float, default=4.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--sampler-baseline",
        default=None,
        metavar="REF",
        help="also decode sampled with llama3/generation/sampling.py as of git revision REF",
    )
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="int8: time the Triton kernel's tile settings per weight shape first, decode with the best",
    )
    ap.add_argument(
        "--float32-check",
        action="store_true",
        help="also compare each mode's logits with a float32 copy of the model (3x the memory)",
    )
    ap.add_argument(
        "--inductor",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a torch._inductor.config value (Python literal) before compiling",
    )
    a = ap.parse_args(argv)
    import ast

    for item in a.inductor:
        key, _, value = item.partition("=")
        obj = torch._inductor.config
        *path, leaf = key.split(".")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, leaf, ast.literal_eval(value))

    device = torch.device(a.device)
    dtype = (
        getattr(torch, a.dtype)
        if a.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    report: dict = {"torch": torch.__version__, "shape": a.shape, "dtype": str(dtype)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            report["triton"] = triton.__version__
        except ImportError:
            report["triton"] = None
    nbytes = int(a.bandwidth_gib * 2**30)
    bw = read_bandwidth(torch.get_num_threads(), nbytes=nbytes, passes=10, device=device)
    report["read_bandwidth_GB_s"] = bw / 1e9
    print(json.dumps(report), flush=True)

    args = ModelArgs(**SHAPES[a.shape])
    tokenizer = load_tokenizer(TOKENIZER)
    t = time.perf_counter()
    model = random_model(args, device, dtype)
    report["init_s"] = time.perf_counter() - t
    report["parameters"] = sum(p.numel() for p in model.parameters())
    prompt = tokenizer.encode(
        "The quick brown fox jumps over the lazy dog. " * 2, bos=True, eos=False
    )

    baseline = sampler_at(a.sampler_baseline) if a.sampler_baseline else None
    f32 = None
    if a.float32_check:
        try:
            f32 = float32_reference(model, prompt, a.max_seq_len)
        except Exception as e:
            report["float32_check_error"] = f"{type(e).__name__}: {e}"
    modes = a.modes.split(",")
    for mode in modes:
        if mode == "int8":
            torch._dynamo.reset()  # drop the previous mode's graphs
            quantize_model(model, "int8")
            if a.sweep and gpu_int8.available(torch.empty(0, device=device)):
                try:
                    report["int8_sweep"] = sweep_int8(model)
                except Exception as e:
                    import traceback

                    traceback.print_exc()
                    report["int8_sweep_error"] = f"{type(e).__name__}: {e}"
        elif mode != "bfloat16":
            raise SystemExit(f"unknown mode {mode!r}")
        llm = Llama(model, tokenizer, max_seq_len=a.max_seq_len, max_batch_size=1)
        res: dict = {"weight_bytes": weight_bytes_per_token(model)}
        if mode == "int8":
            on = gpu_int8.available(torch.empty(0, device=device))
            res["one_row_products"] = "triton" if on else "pytorch"
            if on:
                res["tiles"] = {
                    f"{n}x{k}": str(gpu_int8.config_for(n, k)) for n, k in int8_shapes(model)
                }
        bound = bw / res["weight_bytes"]
        res["bound_tok_s"] = bound
        if mode == "bfloat16":
            try:
                s = cublas_layers(model)
                if s is not None:
                    res["cublas_projections_tok_s"] = 1 / s
                    res["cublas_projections_of_bound"] = 1 / s / bound
            except Exception as e:
                res["cublas_error"] = f"{type(e).__name__}: {e}"
        try:
            res.update(measure(llm, prompt, a.new_tokens, a.steps, a.runs, f32, baseline))
        except Exception as e:  # report it, go on with the next mode
            import traceback

            traceback.print_exc()
            res["error"] = f"{type(e).__name__}: {e}"
        for key in (
            "step_tok_s",
            "decode_tok_s",
            "decode_sampled_tok_s",
            "decode_sampled_baseline_tok_s",
        ):
            if key in res:
                res[key.replace("tok_s", "of_bound")] = res[key] / bound
        report[mode] = res
        print(json.dumps({mode: res}), flush=True)
        del llm
        if device.type == "cuda":
            torch.cuda.synchronize()
    if all("decode_tok_s" in report.get(m, {}) for m in ("bfloat16", "int8")):
        report["int8_over_bfloat16"] = (
            report["int8"]["decode_tok_s"] / report["bfloat16"]["decode_tok_s"]
        )
    text = json.dumps(report, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
