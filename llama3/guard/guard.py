"""`Guard`: a loaded Llama Guard model that classifies a conversation's last user or agent turn.

Any checkpoint this project loads works (Meta, Hugging Face, GGUF, quantized), on any device.
The version is read from the model when not given: a Hugging Face / GGUF chat template with
`[INST] Task:` is Llama Guard 2, one with the Llama 3 headers is Llama Guard 3; without a
template, a Llama 3.1-style RoPE scaling means 3 (3-8B is Llama 3.1, 3-1B Llama 3.2) and plain
Llama 3 means 2. Calls are serialised by a lock, so one Guard can serve several threads.

Verdicts run through a continuous-batching engine of the guard's own with prefix caching: every
prompt of a guard starts with the same task and category list (about 200 tokens), so after the
first check only the conversation and the closing instruction are computed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError
from ..generation.params import SamplingParams
from .categories import Category, select
from .prompt import GuardRole, encode, render
from .verdict import Verdict, parse_verdict

if TYPE_CHECKING:
    from ..engine.engine import LLMEngine
    from ..generation.llama import Llama

#: the longest verdict is `unsafe\nS1,S2,...`: a few tokens per code
MAX_VERDICT_TOKENS = 32


def detect_version(llm: Llama) -> int:
    template = getattr(llm.tokenizer, "chat_template", None) or ""
    if "[INST] Task: Check if there is unsafe content" in template:
        return 2
    if "Task: Check if there is unsafe content" in template and "<|start_header_id|>" in template:
        return 3
    args = getattr(llm.model, "params", None)
    return 3 if getattr(args, "use_scaled_rope", False) else 2


class Guard:
    def __init__(
        self,
        llm: Llama,
        *,
        version: int | None = None,
        exclude: Sequence[str] = (),
        add: Sequence[str | tuple[str, str]] = (),
    ) -> None:
        self.llm = llm
        self.version = version if version is not None else detect_version(llm)
        self.categories: tuple[Category, ...] = select(self.version, exclude, add)
        self._params = SamplingParams(temperature=0.0, max_tokens=MAX_VERDICT_TOKENS)
        self._lock = threading.Lock()
        self._engine: LLMEngine | None = None

    def _prompts_engine(self) -> LLMEngine:
        """The engine verdicts run in (built on first use). One sequence at a time, so its KV pool
        is one context long; the pool is allocated empty, and only blocks in use are touched."""
        if self._engine is None:
            from ..engine.engine import LLMEngine, default_engine_config

            model = self.llm.model
            cfg = default_engine_config(model, max_num_seqs=1, max_model_len=self.llm.max_seq_len)
            self._engine = LLMEngine(model, self.llm.tokenizer, cfg)
        return self._engine

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        version: int | None = None,
        exclude: Sequence[str] = (),
        add: Sequence[str | tuple[str, str]] = (),
        device: str | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        max_seq_len: int | None = None,
    ) -> Guard:
        from ..generation.llama import Llama

        llm = Llama.load(
            path,
            device=device,
            dtype=dtype,
            quantize=quantize,
            max_seq_len=max_seq_len,
            max_batch_size=1,
        )
        return cls(llm, version=version, exclude=exclude, add=add)

    def prompt(self, conversation: Sequence[Any], role: GuardRole | None = None) -> str:
        """The prompt text this guard sends (special tokens written out)."""
        return render(self.version, conversation, self.categories, role)

    def classify(self, conversation: Sequence[Any], role: GuardRole | None = None) -> Verdict:
        """The verdict on the last `role` turn ('User' or 'Agent'; default: the last turn's)."""
        ids = encode(self.llm.tokenizer, self.version, conversation, self.categories, role)
        if len(ids) + MAX_VERDICT_TOKENS > self.llm.max_seq_len:
            raise InvalidRequestError(
                f"the guard prompt has {len(ids)} tokens, more than the guard model's context "
                f"({self.llm.max_seq_len}) leaves room for",
                "shorten the conversation, or load the guard with a longer --guard-max-seq-len",
                param="messages",
            )
        with self._lock:
            result = self._prompts_engine().generate([ids], self._params)[0]
        return parse_verdict(result.text, self.categories)
