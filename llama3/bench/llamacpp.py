"""llama.cpp through llama-cpp-python's C API (the high-level `Llama` class serves one sequence, so
batch 8 uses `llama_decode` with eight sequence ids, as llama.cpp's own batched tools do).

Greedy: the argmax of each row's logits, never stopping early, like the other engines here.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np

from .engine import TimedEngine

INSTALL_HINT = (
    "llama-cpp-python is not installed; `pip install llama-cpp-python` builds llama.cpp (~10 min)"
)


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of the file's tensors one decoded token reads: all but the embedding table, unless
    the table is also the output head (no separate `output.weight`)."""
    from gguf import GGUFReader

    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(sizes.values())
    if "output.weight" in sizes:
        total -= sizes.get("token_embd.weight", 0)
    return total


class LlamaCppEngine(TimedEngine):
    name = "llama.cpp"

    def __init__(self, model: Path, *, threads: int, max_seq_len: int, max_batch: int) -> None:
        try:
            import llama_cpp as L
        except ImportError:
            raise RuntimeError(INSTALL_HINT) from None
        if model.suffix != ".gguf":
            raise RuntimeError(f"llama.cpp reads GGUF files, not {model.name}")
        self.L = L
        L.llama_backend_init()
        L.llama_log_set(_SILENT, ctypes.c_void_p(0))
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(model).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model}")
        cp = L.llama_context_default_params()
        cp.n_ctx = max_seq_len * max_batch
        cp.n_batch = cp.n_ubatch = 512
        cp.n_seq_max = max_batch
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(512, 0, max_batch)
        self.mem = L.llama_get_memory(self.ctx)
        self.weight_bytes = gguf_weight_bytes(model)
        self.label = "llama.cpp " + getattr(L, "__version__", "")

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence, want logits)."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0], b.logits[i] = seq, logits
        b.n_tokens = len(items)
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, i: int) -> int:
        ptr = self.L.llama_get_logits_ith(self.ctx, i)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def _stamps(self, prompts: list[list[int]], new_tokens: int) -> list[float]:
        self.L.llama_memory_clear(self.mem, True)
        t0 = time.perf_counter()
        nexts = []
        for s, p in enumerate(prompts):  # one prompt per llama_decode call, logits of its last
            for start in range(0, len(p), 512):
                chunk = p[start : start + 512]
                last = start + len(chunk) == len(p)
                self._decode(
                    [(t, start + j, s, last and j == len(chunk) - 1) for j, t in enumerate(chunk)]
                )
            nexts.append(self._argmax((len(p) - 1) % 512))
        stamps = [time.perf_counter() - t0]
        for step in range(1, new_tokens):
            self._decode(
                [(t, len(p) + step - 1, s, True) for s, (t, p) in enumerate(zip(nexts, prompts))]
            )
            nexts = [self._argmax(i) for i in range(len(prompts))]
            stamps.append(time.perf_counter() - t0)
        return stamps


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _SILENT(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass
