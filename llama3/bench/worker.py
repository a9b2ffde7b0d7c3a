"""One engine's measurements, in a process of its own: `python -m llama3.bench.worker` reads a
`WorkerSpec` as JSON on stdin and prints one JSON object (its results, or `error`) on stdout."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..utils.memory import proc_kib_field
from .engine import TimedEngine
from .stats import Summary

ENGINES = ("llama3", "llama.cpp", "transformers")


@dataclass
class WorkerSpec:
    engine: str
    model: str
    threads: int
    prompt: list[int]
    decode_prompts: list[list[int]]
    new_tokens: int
    batches: list[int]
    runs: int
    quantize: str | None = None
    compile: bool = False

    @property
    def max_seq_len(self) -> int:
        longest = max(len(self.prompt), max(len(p) for p in self.decode_prompts) + self.new_tokens)
        return longest + 8


def open_engine(spec: WorkerSpec) -> TimedEngine:
    model = Path(spec.model)
    if spec.engine == "llama3":
        from .ours import OursEngine

        return OursEngine(
            model,
            max_seq_len=spec.max_seq_len,
            max_batch=max(spec.batches),
            quantize=spec.quantize,
            compile=spec.compile,
            compile_batches=spec.batches,
        )
    if spec.engine == "llama.cpp":
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine(
            model, threads=spec.threads, max_seq_len=spec.max_seq_len, max_batch=max(spec.batches)
        )
    if spec.engine == "transformers":
        from .hf import TransformersEngine

        return TransformersEngine(model)
    raise ValueError(f"unknown engine {spec.engine!r}; choose from {', '.join(ENGINES)}")


def measure(spec: WorkerSpec) -> dict:
    t = time.perf_counter()
    if spec.engine != "llama.cpp":  # llama.cpp takes its thread count per context
        import torch

        torch.set_num_threads(spec.threads)
    engine = open_engine(spec)
    compile_s = getattr(engine, "compile_s", 0.0)
    load_s = time.perf_counter() - t - compile_s

    # Warm-up (and compilation): every shape the runs below use, once.
    t = time.perf_counter()
    engine.prefill(spec.prompt)
    for b in spec.batches:
        engine.decode(spec.decode_prompts[:b], min(spec.new_tokens, 8))
    warmup_s = time.perf_counter() - t + compile_s

    prefill = [len(spec.prompt) / engine.prefill(spec.prompt) for _ in range(spec.runs)]
    decode: dict[str, list[float]] = {}
    ttft: list[float] = []
    for b in spec.batches:
        rates = []
        for _ in range(spec.runs):
            first, rest = engine.decode(spec.decode_prompts[:b], spec.new_tokens)
            rates.append(b * (spec.new_tokens - 1) / rest)
            if b == 1:
                ttft.append(first * 1000)
        decode[str(b)] = rates
    return {
        "engine": spec.engine,
        "label": engine.label,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "prefill_tok_s": Summary.of(prefill).to_dict(),
        "ttft_ms": Summary.of(ttft).to_dict() if ttft else None,
        "decode_tok_s": {b: Summary.of(r).to_dict() for b, r in decode.items()},
        "weight_bytes": engine.weight_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def peak_rss_bytes() -> int:
    """This process's own peak resident memory. Not getrusage's ru_maxrss: Linux carries that
    across fork and exec, so a worker would report its parent's peak when the parent's is larger
    (earlier runs of the bench showed every engine at the driver's 806 MB)."""
    peak = proc_kib_field("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main() -> int:
    spec = WorkerSpec(**json.loads(sys.stdin.read()))
    try:
        out = measure(spec)
    except (RuntimeError, OSError) as e:
        out = {"engine": spec.engine, "error": str(e)}
    except Exception as e:  # a peer's own failure is a result to report, not a crash of the bench
        out = {"engine": spec.engine, "error": f"{type(e).__name__}: {e}"}
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
