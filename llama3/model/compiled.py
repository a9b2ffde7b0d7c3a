"""The decode step compiled with `torch.compile` over a `StaticKVCache`.

One graph per batch size (on CPU the native attention reads the keys up to the position it is
given; elsewhere the attention window is a dynamic size); `warm_up` compiles the batch sizes a run
will use before the first request, so no request waits on the compiler. Inductor's on-disk cache
keeps the compiled code across runs. On CUDA the step replays as a CUDA graph, the caches sit at
static addresses (the graph writes into them in place), and coordinate-descent tuning is on:
with it Inductor writes a one-row product as a reduction it tunes to the memory's speed; int8
weights' one-row products are a Triton kernel traced into the graph (`kernels.gpu_int8`). Prefill stays
eager: its lengths vary, and one long product per layer has no per-operator overhead to remove.

CPU int8 models skip this: `model.native_decode` runs each layer as one native call, faster than
the compiled graph (BENCHMARKS.md, runs J and L).
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Iterable

import torch

from .static_cache import StaticKVCache, window_for
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
        self.model = model
        model.inv_freq(model.device)  # computed once now, not inside (and mutated by) the graph
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        self._cuda = model.device.type == "cuda"
        self._caches: dict[int, StaticKVCache] = {}
        self._tokens: dict[int, torch.Tensor] = {}  # each step's input ids, per batch size
        self._pos = torch.zeros(1, dtype=torch.long, device=model.device)  # each step's position
        if self._cuda:  # read in place by the CUDA graph, not copied into it per step
            torch._dynamo.mark_static_address(self._pos)
        # one graph per batch size is expected
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, 2 * max_batch_size
        )
        # The wrapper's per-call stride checks of ~370 inputs (~0.3 ms a step) re-check what
        # dynamo's guards already did.
        options: dict[str, object] = {"size_asserts": False}
        if self._cuda:
            options["triton.cudagraphs"] = True  # replay the whole step: no per-kernel launches
            options["coordinate_descent_tuning"] = True
        skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        if skip is not None:
            # The weights never change after load, so checking each of them before every step
            # (~1 ms for 300 tensors) buys nothing.
            options["guard_filter_fn"] = skip
        # Dynamo keeps compiled graphs per code object and, with module guards skipped, would
        # hand this decoder the graph traced for another model (another layout of layers) in
        # the same process: each decoder compiles its own copy of `_forward`'s code.
        forward = types.FunctionType(
            CompiledDecoder._forward.__code__.replace(), CompiledDecoder._forward.__globals__
        )
        self._compiled = torch.compile(
            types.MethodType(forward, self), fullgraph=True, dynamic=False, options=options
        )

    def cache_for(self, batch_size: int) -> StaticKVCache:
        """The cache for batches of exactly `batch_size` rows (allocated on first use). One per
        size: writing into row slices of a larger cache would make the compiled graph copy it."""
        if batch_size not in self._caches:
            m = self.model
            cache = StaticKVCache(
                m.params, batch_size, self.max_seq_len, device=m.device, dtype=m.dtype
            )
            if self._cuda:  # else the CUDA graph would copy every cache in and out per step
                for t in cache.k + cache.v:
                    torch._dynamo.mark_static_address(t)
            self._caches[batch_size] = cache
        return self._caches[batch_size]

    def _forward(
        self, tokens: torch.Tensor, pos: torch.Tensor, cache: StaticKVCache
    ) -> torch.Tensor:
        return self.model.logits(tokens, pos, cache, positions=pos, last_only=True)

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Logits (bsz, 1, vocab) for `tokens` (bsz, 1) at `position`, the same for every row."""
        device = tokens.device
        b = tokens.shape[0]
        cache = self.cache_for(b)
        if not cache.native:  # the portable attention reads a window of the cache, masked
            window = window_for(position, self.max_seq_len)
            visible = torch.arange(window, device=device) <= position
            torch._dynamo.maybe_mark_dynamic(visible, 0)
            cache.visible = visible
        # The caller's tokens are often a column of a longer buffer, whose stride the compiled
        # graph would guard on (a recompile per prompt length): copy into one of ours.
        if b not in self._tokens:
            self._tokens[b] = torch.empty((b, 1), dtype=torch.long, device=device)
            if self._cuda:
                torch._dynamo.mark_static_address(self._tokens[b])
        tokens = self._tokens[b].copy_(tokens)
        pos = self._pos.fill_(position)  # no host-to-device copy to wait on
        # no_grad, not inference mode: dynamo cannot trace writes into the cache views under
        # inference mode
        with torch.no_grad():
            if self._cuda:  # the previous step's outputs (cloned below) may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            return self._compiled(tokens, pos, cache).clone()

    def warm_up(self, batch_sizes: Iterable[int]) -> float:
        """Compile the step for `batch_sizes` (every window); returns the seconds it took."""
        t = time.perf_counter()
        device = self.model.device
        for b in batch_sizes:
            tokens = torch.zeros((b, 1), dtype=torch.long, device=device)
            # With the native attention one graph serves every position. Else the smallest
            # window (its graph takes any window length) and the full cache, which the compiler
            # specializes into a graph of its own.
            last = self.max_seq_len - 1 if not self.cache_for(b).native else 0
            for position in {0, last}:
                self.step(tokens, position)
        took = time.perf_counter() - t
        log.info("compiled the decode step in %.1f s", took)
        return took
