"""The machine's memory read bandwidth, which bounds decoding: every decoded token reads every weight.

Measured by summing a buffer with all benchmark threads; the best of a few passes is the figure (a
sum is one load and one add per element, so it runs at read speed). Two sizes matter: a buffer much
larger than the caches gives the memory's bandwidth; a buffer the size of the weights one token
reads gives the speed at which a decoder can stream exactly that working set, pass after pass —
faster than memory where a large last-level cache holds part of it (a 135 MB model on a server CPU
with hundreds of MB of L3). The decode bound uses the second: it is what the decoder is up against.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

#: large enough to defeat every cache level of a desktop or server CPU (some have ~500 MB of L3)
BUFFER_BYTES = 1024 * 2**20


def read_bandwidth(
    threads: int,
    *,
    nbytes: int = BUFFER_BYTES,
    passes: int = 7,
    device: torch.device | str = "cpu",
) -> float:
    """Bytes per second read by a float32 reduction over `nbytes` with `threads` threads (on a
    GPU, `device`, the threads only launch it)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        buf.sum()  # fault the pages in
        best = float("inf")
        for _ in range(passes):
            sync()
            t = time.perf_counter()
            buf.sum()
            sync()
            best = min(best, time.perf_counter() - t)
        return buf.numel() * 4 / best
    finally:
        torch.set_num_threads(before)


def read_bandwidth_apart(threads: int, *, nbytes: int = BUFFER_BYTES) -> float:
    """`read_bandwidth` in a process of its own: the buffer would otherwise raise this process's
    peak RSS, which the engines' worker processes inherit (Linux keeps it across fork and exec)."""
    code = (
        "import json, sys; from llama3.bench.bandwidth import read_bandwidth; "
        f"print(json.dumps(read_bandwidth({int(threads)}, nbytes={int(nbytes)})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def decode_bound(weight_bytes: int, bandwidth: float) -> float:
    """Tokens per second at which reading `weight_bytes` per token saturates `bandwidth`."""
    return bandwidth / weight_bytes
