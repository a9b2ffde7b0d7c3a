"""The decode step compiled with `torch.compile` over a `StaticKVCache`.

One graph per (batch size, attention window); `warm_up` compiles the buckets a run will use before
the first request, so no request waits on the compiler. Inductor's on-disk cache keeps the compiled
code across runs. Prefill stays eager: its lengths vary, and one long product per layer has no
per-operator overhead to remove.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch

from .static_cache import StaticKVCache, window_for, windows
from .transformer import Transformer

log = logging.getLogger(__name__)


def compile_available() -> str | None:
    """None when torch.compile can run here, else why not."""
    try:
        import torch._inductor  # noqa: F401
    except Exception as e:  # pragma: no cover - platform dependent
        return f"torch.compile is unavailable: {e}"
    import shutil

    if torch.cuda.is_available():
        return None
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on CPU needs a C++ compiler (install g++)"
    return None


class CompiledDecoder:
    def __init__(self, model: Transformer, max_batch_size: int, max_seq_len: int) -> None:
        weight = model.tok_embeddings.weight
        self.model = model
        model.inv_freq(weight.device)  # computed once now, not inside (and mutated by) the graph
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        self.cache = StaticKVCache(
            model.params, max_batch_size, max_seq_len, device=weight.device, dtype=weight.dtype
        )
        # recompiles are expected: one per (batch size, window) bucket, warmed up front
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, 4 * max_batch_size * len(windows(max_seq_len))
        )
        options = {}
        skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        if skip is not None:
            # The weights never change after load, so checking each of them before every step
            # (~1 ms for 300 tensors) buys nothing.
            options["guard_filter_fn"] = skip
        self._compiled = torch.compile(
            self._forward, fullgraph=True, dynamic=False, options=options
        )

    def _forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.logits(tokens, pos, self.cache, positions=pos, last_only=True)

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Logits (bsz, 1, vocab) for `tokens` (bsz, 1) at `position`, the same for every row."""
        self.cache.window = window_for(position, self.max_seq_len)
        pos = torch.tensor([position], device=tokens.device)
        # no_grad, not inference mode: dynamo cannot trace writes into the cache views under
        # inference mode
        with torch.no_grad():
            return self._compiled(tokens, pos).clone()

    def warm_up(self, batch_sizes: Iterable[int], *, up_to: int | None = None) -> float:
        """Compile every bucket for `batch_sizes` and windows up to position `up_to`; seconds."""
        t = time.perf_counter()
        device = self.model.tok_embeddings.weight.device
        last = (up_to or self.max_seq_len) - 1
        for b in batch_sizes:
            tokens = torch.zeros((b, 1), dtype=torch.long, device=device)
            for w in windows(self.max_seq_len):
                self.step(tokens, min(w - 1, last))
                if w > last:
                    break
        took = time.perf_counter() - t
        log.info("compiled the decode step in %.1f s", took)
        return took
