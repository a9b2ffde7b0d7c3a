"""LoRA adapters served by name over one base model (`llama3 serve --lora name=PATH`), and the
routes that load and unload them while the server runs (vLLM's names and bodies):

    POST /v1/load_lora_adapter   {"lora_name": "...", "lora_path": "/path/to/adapter"}
    POST /v1/unload_lora_adapter {"lora_name": "..."}

A request's `model` picks the adapter; the base model's own name (or no `model`) runs the base.
Loading reads and checks the files on a worker thread (the event loop keeps serving), then puts
the weights beside the others between two engine steps: requests in flight are not disturbed.
Unloading waits for the requests already using the adapter to finish (new ones get 404 at once),
then frees it: an unload never cuts an answer short. Both routes sit behind the API key.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ..errors import Llama3Error
from ..lora.multi import LoRABank
from ..lora.peft_io import read_adapter
from .errors import APIError, from_llama3_error

if TYPE_CHECKING:
    from ..engine.async_engine import AsyncLLMEngine
    from ..model.transformer import Transformer

log = logging.getLogger("llama3.serve")

#: how often an unload looks again whether the adapter's last requests have finished
DRAIN_POLL_S = 0.02
_NAME = re.compile(r"^[\w][\w.:/@+-]{0,127}$")


@dataclass(frozen=True)
class ServedAdapter:
    name: str
    path: str
    lora_id: int
    created: int


class ServedAdapters:
    """Names -> adapters of one server. Touched on the event loop only (and on the loading
    thread before the engine starts)."""

    def __init__(self, base_name: str, max_loras: int | None = None) -> None:
        self.base_name = base_name
        #: most adapters loaded at once (`--max-loras`); None: no cap
        self.max_loras = max_loras
        self.bank: LoRABank | None = None
        #: why adapters cannot be served by name here (--adapter, tensor parallelism), if so
        self.unavailable: str | None = None
        self.by_name: dict[str, ServedAdapter] = {}
        self._loading: set[str] = set()

    # ---- picking an adapter ----------------------------------------------------------------------
    def names(self) -> list[str]:
        return [self.base_name, *self.by_name]

    def lora_id(self, model: str | None) -> int:
        """The adapter id `model` names (0: the base); 404 naming what is served otherwise."""
        if model is None or model == self.base_name:
            return 0
        a = self.by_name.get(model)
        if a is None:
            served = ", ".join(repr(n) for n in self.names())
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {served}",
                param="model",
                code="model_not_found",
            )
        return a.lora_id

    def card(self, a: ServedAdapter, max_model_len: int | None) -> dict[str, Any]:
        """An adapter's /v1/models entry, vLLM's shape (`parent` is the base model)."""
        card: dict[str, Any] = {
            "id": a.name,
            "object": "model",
            "created": a.created,
            "owned_by": "llama3",
            "root": a.path,
            "parent": self.base_name,
        }
        if max_model_len is not None:
            card["max_model_len"] = max_model_len
        return card

    # ---- loading ---------------------------------------------------------------------------------
    def attach(self, model: Transformer, unavailable: str | None = None) -> LoRABank | None:
        """Make the bank the engine will route through (None where adapters cannot run)."""
        self.unavailable = unavailable
        if unavailable is None:
            self.bank = LoRABank(model)
        return self.bank

    def load_now(self, name: str, path: str) -> ServedAdapter:
        """Load at start-up, before the engine runs (the --lora flags)."""
        bank = self._check_new(name)
        adapter = read_adapter(path, bank.model.params)
        return self._add(name, path, bank.add(adapter))

    async def load(self, name: str, path: str, engine: AsyncLLMEngine) -> ServedAdapter:
        bank = self._check_new(name)
        self._loading.add(name)
        try:
            # safetensors reads and checks on a worker thread; the swap-in happens between steps
            adapter = await asyncio.to_thread(read_adapter, path, bank.model.params)
            lora_id = await engine.call(lambda: bank.add(adapter))
        except Llama3Error as e:
            raise _as_400(e) from None
        except (OSError, RuntimeError, ValueError) as e:  # e.g. a corrupt adapter_model.bin
            raise APIError(
                400,
                f"cannot read the adapter at {path}: {type(e).__name__}: {e}",
                param="lora_path",
                code="invalid_adapter",
            ) from None
        finally:
            self._loading.discard(name)
        log.info("LoRA adapter %r loaded from %s", name, path)
        return self._add(name, path, lora_id)

    async def unload(self, name: str, engine: AsyncLLMEngine) -> None:
        a = self.by_name.pop(name, None)  # from now on a request for it is a 404
        if a is None:
            raise APIError(
                404,
                f"no LoRA adapter named {name!r} is loaded"
                + (f" (loaded: {', '.join(map(repr, self.by_name))})" if self.by_name else ""),
                param="lora_name",
                code="model_not_found",
            )
        bank, llm = self.bank, engine.engine
        assert bank is not None

        def remove_when_idle() -> bool:
            if llm.uses_lora(a.lora_id):
                return False
            bank.remove(a.lora_id)
            return True

        if not await engine.call(remove_when_idle):
            log.info("LoRA adapter %r: unloading once its requests in flight finish", name)
            while not await engine.call(remove_when_idle):
                await asyncio.sleep(DRAIN_POLL_S)
        log.info("LoRA adapter %r unloaded", name)

    def _check_new(self, name: str) -> LoRABank:
        if self.bank is None:
            raise APIError(
                400,
                f"this server cannot load LoRA adapters by name: {self.unavailable}",
                param="lora_name",
            )
        if not isinstance(name, str) or not _NAME.match(name):
            raise APIError(
                400,
                f"invalid adapter name {name!r}: use 1-128 letters, digits or ._-:/@+ "
                "(starting with a letter or digit)",
                param="lora_name",
            )
        if name == self.base_name or name in self.by_name or name in self._loading:
            what = "the base model's name" if name == self.base_name else "already loaded"
            raise APIError(
                400,
                f"the name {name!r} is {what}",
                param="lora_name",
                code="adapter_name_in_use",
            )
        held = [*self.by_name, *self._loading]  # loads under way count: they will be loaded
        if self.max_loras is not None and len(held) >= self.max_loras:
            raise APIError(
                409,
                f"cannot load {name!r}: {len(held)} LoRA adapters are loaded, the cap "
                f"(--max-loras {self.max_loras}) ({', '.join(map(repr, held))}); unload one "
                'first with POST /v1/unload_lora_adapter {"lora_name": "..."}, or restart with '
                "a higher --max-loras",
                param="lora_name",
                code="too_many_adapters",
            )
        return self.bank

    def _add(self, name: str, path: str, lora_id: int) -> ServedAdapter:
        a = ServedAdapter(name, path, lora_id, int(time.time()))
        self.by_name[name] = a
        return a


def _as_400(e: Llama3Error) -> APIError:
    """A bad adapter folder is the caller's mistake: 400 with the reason, whatever its type."""
    err = from_llama3_error(e)
    return APIError(400, err.message, param="lora_path", code="invalid_adapter")


# ---- routes ----------------------------------------------------------------------------------------
class LoadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    #: accepted for vLLM's clients, which may send it; unused
    lora_int_id: int | None = None


router = APIRouter()


def _served(request: Request) -> tuple[ServedAdapters, AsyncLLMEngine]:
    state = request.app.state.server
    return state.adapters, state.require_engine()


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRARequest, request: Request) -> dict[str, Any]:
    adapters, engine = _served(request)
    a = await adapters.load(body.lora_name, body.lora_path, engine)
    return adapters.card(a, engine.max_model_len)


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRARequest, request: Request) -> dict[str, Any]:
    adapters, engine = _served(request)
    await adapters.unload(body.lora_name, engine)
    return {"id": body.lora_name, "object": "model", "deleted": True}
