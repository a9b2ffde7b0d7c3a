"""What the server runs on: its settings, and the model + engine it loads in the background.

`ServerConfig` is the one frozen dataclass the CLI fills. `ServerState.load` runs on a thread while
the HTTP server already answers (`/health` says 503 until the engine is up), builds the engine with
the requested limits and starts its step thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.async_engine import AsyncLLMEngine
from ..engine.engine import EngineStats, LLMEngine, default_engine_config
from ..errors import ConfigError, Llama3Error
from ..guard.settings import GuardSettings
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.chat_format import ChatFormatter
from .adapters import ServedAdapters
from .errors import APIError

if TYPE_CHECKING:
    from ..guard.serving import ServerGuard

log = logging.getLogger("llama3.serve")

MiB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    #: checkpoint path (Meta dir, HF dir, .gguf); None = the built-in default model
    model: str | None = None
    #: the name clients pass as `model`; default: the checkpoint's file or directory name
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    dtype: str | None = None
    #: "int8": projections on int8 weights (CPU)
    quantize: str | None = None
    #: a LoRA adapter folder (PEFT format) run unmerged over the weights
    adapter: str | None = None
    #: LoRA adapters served by name over the base: (name, folder) each (`--lora name=PATH`)
    loras: tuple[tuple[str, str], ...] = ()
    #: most adapters loaded by name at once (None: no cap)
    max_loras: int | None = None
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512
    #: longest prompt + generation; default: the trained context, capped by the KV cache
    max_model_len: int | None = None
    #: KV-cache size in bytes; default: a share of free memory
    kv_cache_bytes: int | None = None
    #: accepted bearer keys; empty = no authentication
    api_keys: tuple[str, ...] = ()
    #: requests waiting for a slot at most; more get 429
    max_queue: int = 256
    #: seconds a request may take in all; None = no limit
    request_timeout: float | None = 600.0
    #: CORS origins allowed to call the API from a browser ("*" for any)
    allowed_origins: tuple[str, ...] = ()
    #: request bodies larger than this get 413
    max_body_bytes: int = 4 * MiB
    #: the Llama Guard safety filter around chat completions; None = off
    guard: GuardSettings | None = None


class ServerState:
    def __init__(self, config: ServerConfig, model_path: Path) -> None:
        self.config = config
        self.model_path = model_path
        self.model_name = config.served_model_name or _default_name(model_path)
        self.created = int(time.time())
        self.fingerprint = (
            "fp_"
            + hashlib.blake2b(
                f"{model_path.resolve()}|{config}".encode(), digest_size=5
            ).hexdigest()
        )
        self.engine: AsyncLLMEngine | None = None
        self.tokenizer: BaseTokenizer | None = None
        self._formatter: ChatFormatter | None = None
        self._formatter_error: Llama3Error | None = None
        self.load_error: Exception | None = None
        self.guard: ServerGuard | None = None
        #: the adapters a request's `model` may name (`--lora`, /v1/load_lora_adapter)
        self.adapters = ServedAdapters(self.model_name, config.max_loras)

    # ---- loading ---------------------------------------------------------------------------------
    def start_loading(
        self, loop: asyncio.AbstractEventLoop, on_error: Callable[[Exception], None]
    ) -> threading.Thread:
        def run() -> None:
            try:
                self.load(loop)
            except Exception as e:  # reported by the CLI, which then exits
                self.load_error = e
                on_error(e)

        t = threading.Thread(target=run, name="llama3-load", daemon=True)
        t.start()
        return t

    def load(self, loop: asyncio.AbstractEventLoop) -> None:
        from ..loader import load
        from ..tokenizer import chat_formatter

        c = self.config
        from ..parallel import current

        if c.adapter is not None and c.loras:
            raise ConfigError(
                "--adapter (one adapter for every request) and --lora (adapters by name) "
                "cannot be combined",
                "serve each adapter by name with --lora, and the base as itself",
            )
        if c.loras and current() is not None:
            raise ConfigError(
                "--lora is not supported under torchrun yet",
                "merge each adapter (llama3 merge) and serve the merged weights",
            )
        lm = load(
            self.model_path,
            device=c.device,
            dtype=c.dtype,
            quantize=c.quantize,
            tensor_parallel=current(),  # rank 0 of a torchrun job: its shard, driving the rest
        )
        if c.adapter is not None:
            if current() is not None:
                raise ConfigError(
                    "--adapter is not supported under torchrun yet",
                    "merge it first (llama3 merge) and serve the merged weights",
                )
            from ..lora import load_adapter

            load_adapter(lm.model, c.adapter)
            lm.weights_note += f"; LoRA adapter {c.adapter} (unmerged)"
        if c.guard is not None:  # its own model beside the engine's, loaded before serving
            from ..guard.serving import ServerGuard

            self.guard = ServerGuard(c.guard, c.guard.load())
            log.info("guard: %s", self.guard.describe())
        unavailable = None
        if c.adapter is not None:
            unavailable = "it runs --adapter over every request (restart it without --adapter)"
        elif current() is not None:
            unavailable = "adapters do not run under tensor parallelism yet"
        bank = self.adapters.attach(lm.model, unavailable)
        for name, path in c.loras:
            self.adapters.load_now(name, path)
            lm.weights_note += f"; LoRA adapter {name!r} from {path}"
        cfg = default_engine_config(
            lm.model,
            max_num_seqs=c.max_num_seqs,
            max_model_len=c.max_model_len,
            kv_cache_bytes=c.kv_cache_bytes,
            max_num_batched_tokens=c.max_num_batched_tokens,
        )
        engine = AsyncLLMEngine(LLMEngine(lm.model, lm.tokenizer, cfg, lora=bank))
        self.tokenizer = lm.tokenizer
        try:
            self._formatter = chat_formatter(lm.tokenizer)
        except Llama3Error as e:  # a base model: completions only
            self._formatter_error = e
        engine.start(loop)
        from ..structured.compiler import warm_up

        warm_up(lm.tokenizer)  # structured output's vocabulary, off the first request's clock
        self.engine = engine
        log.info("weights: %s", lm.weights_note)
        log.info(
            "serving %s as %r: %d KV blocks of %d tokens, max_model_len %d, max_num_seqs %d "
            "(loaded in %.1f s)",
            self.model_path,
            self.model_name,
            cfg.num_blocks,
            cfg.block_size,
            cfg.model_len,
            cfg.max_num_seqs,
            lm.load_seconds,
        )

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    # ---- what handlers need ----------------------------------------------------------------------
    def require_engine(self) -> AsyncLLMEngine:
        if self.engine is None:
            raise APIError(503, "the model is still loading", code="model_loading")
        return self.engine

    @property
    def formatter(self) -> ChatFormatter:
        if self._formatter is None:
            e = self._formatter_error
            raise APIError(
                400,
                f"{e.message} ({e.hint})" if e and e.hint else "this model has no chat format",
                param="messages",
                code="no_chat_template",
            )
        return self._formatter

    def stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine is not None else None

    def check_model(self, name: str | None) -> int:
        """The adapter id a request's `model` names (0: the base model); 404 if none."""
        return self.adapters.lora_id(name)


def _default_name(path: Path) -> str:
    return path.stem if path.suffix == ".gguf" else path.name
