"""transformers (eager, float32) on the same weights: a GGUF file is dequantized by transformers'
own GGUF reader; a Hugging Face directory is read as is. Greedy decoding with its KV cache."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .engine import TimedEngine

INSTALL_HINT = "transformers is not installed; `pip install transformers`"


class TransformersEngine(TimedEngine):
    name = "transformers"

    def __init__(self, model: Path) -> None:
        try:
            import transformers
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise RuntimeError(INSTALL_HINT) from None
        if model.suffix == ".gguf":
            kw = {"gguf_file": model.name}
            where = model.parent
        elif (model / "config.json").is_file():
            kw, where = {}, model
        else:
            raise RuntimeError(
                f"transformers reads GGUF files and Hugging Face directories, not {model}"
            )
        self.model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw).eval()
        params = {p.data_ptr(): p.numel() * p.element_size() for p in self.model.parameters()}
        emb = self.model.get_input_embeddings().weight
        head = self.model.get_output_embeddings().weight
        self.weight_bytes = sum(params.values()) - (
            0 if head.data_ptr() == emb.data_ptr() else emb.numel() * emb.element_size()
        )
        self.label = f"transformers {transformers.__version__}"

    @torch.inference_mode()
    def _stamps(self, prompts: list[list[int]], new_tokens: int) -> list[float]:
        ids = torch.tensor(prompts)
        t0 = time.perf_counter()
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        stamps = [time.perf_counter() - t0]
        for _ in range(1, new_tokens):
            out = self.model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            stamps.append(time.perf_counter() - t0)
        return stamps
