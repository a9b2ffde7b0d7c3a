"""The benchmark's driver: one prompt set, the bandwidth bound, each engine in its own worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .bandwidth import read_bandwidth_apart
from .worker import WorkerSpec

#: Text the prompts are cut from (any text does: the figures do not depend on the words)
PROMPT_TEXT = """\
The history of the printing press begins long before Gutenberg. Woodblock printing spread across
East Asia in the first millennium, and movable type made of ceramic and later metal appeared in
China and Korea centuries before it reached Europe. What changed in fifteenth-century Mainz was the
combination of a practical type mould, an oil-based ink and a screw press adapted from wine making.
Within fifty years, presses were working in more than two hundred European cities, and the price of
a book fell so far that ordinary merchants could own several. Scholars argue about how quickly ideas
travelled as a result, but few doubt that standardised texts changed science, religion and law.
"""


@dataclass
class BenchConfig:
    model: Path
    engines: list[str]
    threads: int
    prompt_tokens: int = 512
    decode_prompt_tokens: int = 64
    new_tokens: int = 128
    batches: list[int] = field(default_factory=lambda: [1, 8])
    runs: int = 3
    quantize: str | None = None
    compile: bool = False


def prompt_ids(tokenizer, n: int) -> list[int]:
    """`n` token ids: BOS, then the text repeated as needed."""
    body = tokenizer.encode(PROMPT_TEXT, bos=False, eos=False)
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    while len(ids) < n:
        ids += body
    return ids[:n]


def worker_specs(cfg: BenchConfig, tokenizer) -> list[WorkerSpec]:
    longest = max(cfg.prompt_tokens, cfg.decode_prompt_tokens + 8 * max(cfg.batches))
    ids = prompt_ids(tokenizer, longest)
    # each row of a batch its own prompt: windows of the text at different offsets
    decode = [ids[8 * j : 8 * j + cfg.decode_prompt_tokens] for j in range(max(cfg.batches))]
    return [
        WorkerSpec(
            engine=e,
            model=str(cfg.model),
            threads=cfg.threads,
            prompt=ids[: cfg.prompt_tokens],
            decode_prompts=decode,
            new_tokens=cfg.new_tokens,
            batches=list(cfg.batches),
            runs=cfg.runs,
            quantize=cfg.quantize if e == "llama3" else None,
            compile=cfg.compile if e == "llama3" else False,
        )
        for e in cfg.engines
    ]


def run_worker(spec: WorkerSpec) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads))
    proc = subprocess.run(
        [sys.executable, "-m", "llama3.bench.worker"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"engine": spec.engine, "error": f"worker exited {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def run_bench(cfg: BenchConfig, tokenizer, on_result=None) -> dict:
    bandwidth = read_bandwidth_apart(cfg.threads)
    results = []
    for spec in worker_specs(cfg, tokenizer):
        r = run_worker(spec)
        if "weight_bytes" in r:  # the speed of streaming this engine's own working set
            r["read_bandwidth_bytes_s"] = read_bandwidth_apart(
                cfg.threads, nbytes=r["weight_bytes"]
            )
        results.append(r)
        if on_result:
            on_result(r)
    return {
        "model": str(cfg.model),
        "threads": cfg.threads,
        "prompt_tokens": cfg.prompt_tokens,
        "decode_prompt_tokens": cfg.decode_prompt_tokens,
        "new_tokens": cfg.new_tokens,
        "batches": cfg.batches,
        "runs": cfg.runs,
        "read_bandwidth_bytes_s": bandwidth,
        "machine": machine(),
        "results": results,
    }


def machine() -> dict:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
