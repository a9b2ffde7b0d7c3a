"""This engine under the benchmark: `Llama.stream`, the path `llama3 generate` runs (with the
compiled step when `--compile`)."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from .engine import TimedEngine


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decoded token reads: every projection and norm, the output head, and
    one embedding row (counted as nothing); a tied head is the embedding table, read in full."""
    seen: set[int] = set()
    total = 0
    for mod in model.modules():
        sized = getattr(mod, "weight_nbytes", None)
        if callable(sized):  # quantized layers know what they hold
            total += sized()
            continue
        if isinstance(mod, nn.Embedding):
            continue
        for p in mod.parameters(recurse=False):
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total


class OursEngine(TimedEngine):
    name = "llama3"

    def __init__(
        self,
        model: Path,
        *,
        max_seq_len: int,
        max_batch: int,
        quantize: str | None = None,
        compile: bool = False,
        compile_batches: list[int] | None = None,
    ) -> None:
        from ..generation.llama import Llama

        self.llm = Llama.load(
            model, max_seq_len=max_seq_len, max_batch_size=max_batch, quantize=quantize
        )
        #: seconds spent compiling at load (reported with the warm-up, not the load)
        self.compile_s = self.llm.compile(batch_sizes=compile_batches) if compile else 0.0
        self.weight_bytes = weight_bytes_per_token(self.llm.model)
        from ..model import native_decode

        if native_decode.eligible(self.llm.model):  # what compiling would have replaced
            how = " native layers"
        else:
            how = " compiled" if self.llm._decoder is not None else ""
        scheme = self.llm.loaded.weights_note.split(":")[0] if self.llm.loaded else quantize
        if scheme and " " in scheme:  # "float32 weights, as stored": no scheme to name
            scheme = None
        self.label = "llama3" + (f" {scheme}" if scheme else "") + how

    def _stamps(self, prompts: list[list[int]], new_tokens: int) -> list[float]:
        from ..generation.params import SamplingParams

        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        run = self.llm.stream(prompts, params)  # the public path: compiled step included
        t0 = time.perf_counter()
        return [time.perf_counter() - t0 for ev in run if ev.index == 0]
