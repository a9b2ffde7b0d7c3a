"""Meta-compatible facade: `Llama.build`, `generate`, `text_completion`, `chat_completion`.

Code written for Meta's reference package runs after `from llama import Llama` becomes
`from llama3 import Llama`, on CPU too and without torchrun. `Llama.load` reads any format.
All methods are thin consumers of `BatchGeneration`'s token events.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from ..errors import InvalidRequestError, TensorParallelError, UnsupportedFormatError
from ..loader import LoadedModel, default_max_seq_len, load
from ..model.transformer import Transformer
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.chat_format import Dialog, Message
from .generate import BatchGeneration, generate
from .params import GenerationResult, SamplingParams, TokenEvent

if TYPE_CHECKING:
    from ..guard.verdict import Verdict
    from ..model.compiled import CompiledDecoder
    from ..parallel.group import TensorParallel
    from ..tokenizer.chat_format import ChatFormatter

log = logging.getLogger(__name__)

#: Meta's defaults (temperature 0.6, top-p 0.9); frozen, so safe to share
DEFAULT_PARAMS = SamplingParams()


class CompletionPrediction(TypedDict, total=False):
    generation: str
    tokens: list[str]
    logprobs: list[float]


class ChatPrediction(TypedDict, total=False):
    generation: Message
    tokens: list[str]
    logprobs: list[float]


class Llama:
    def __init__(
        self,
        model: Transformer,
        tokenizer: BaseTokenizer,
        *,
        max_seq_len: int,
        max_batch_size: int,
        formatter: ChatFormatter | None = None,
        seed: int = 1,
        loaded: LoadedModel | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self._formatter = formatter
        self.loaded = loaded
        # Meta seeds the global RNG once in build(); we keep a private stream instead, so runs are
        # reproducible without touching torch's global generator.
        self._rng = random.Random(seed)
        self._decoder: CompiledDecoder | None = None

    # ---- construction ----------------------------------------------------------------------------
    @staticmethod
    def build(
        ckpt_dir: str,
        tokenizer_path: str | None,
        max_seq_len: int,
        max_batch_size: int,
        model_parallel_size: int | None = None,
        seed: int = 1,
    ) -> Llama:
        """Meta's signature. Works on CPU without torchrun; shards are merged for one process.

        Args:
            ckpt_dir: a Meta checkpoint directory (or any format `Llama.load` reads).
            tokenizer_path: Meta's tokenizer.model; None uses the checkpoint's own tokenizer.
            max_seq_len: the longest prompt + generation to allow.
            max_batch_size: the most prompts per call.
            model_parallel_size: None = WORLD_SIZE (torchrun's); N > 1 under torchrun with N
                processes runs one shard per rank (`.model` holds this rank's), every rank
                calling the same methods as in Meta's examples. Without torchrun, shards are
                merged into this process.
            seed: seeds this object's private sampling stream.
        """
        from ..parallel import group

        world = group.world_size_from_env()
        tp = None
        if model_parallel_size not in (None, 1) or world > 1:
            mp = model_parallel_size or world
            if mp != world:
                raise TensorParallelError(
                    f"model_parallel_size={mp} but this run has {world} process(es)",
                    f"launch with torchrun --nproc-per-node {mp} (or leave model_parallel_size "
                    "unset: the shards are then merged into one process)",
                )
            tp = group.init()
            tp.lockstep = True  # every rank runs this program: rank 0's tokens are everyone's
            if tp.rank > 0:
                sys.stdout = open(os.devnull, "w")  # as Meta's: only rank 0 prints
        return Llama.load(
            ckpt_dir,
            tokenizer_path=tokenizer_path,
            max_seq_len=max_seq_len,
            max_batch_size=max_batch_size,
            seed=seed,
            tensor_parallel=tp,
            auto_quantize=False,  # Meta's API: the weights as stored
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_seq_len: int | None = None,
        max_batch_size: int = 4,
        tokenizer_path: str | os.PathLike | None = None,
        seed: int = 1,
        progress: bool = False,
        quantize: str | None = None,
        tensor_parallel: TensorParallel | None = None,
        auto_quantize: bool = True,
        adapter: str | os.PathLike | None = None,
    ) -> Llama:
        """Load a Meta directory, a Hugging Face directory, a GGUF file or a `llama3 quantize`
        directory (which loads quantized by itself).

        `quantize` ("int8", "int4", "int4-g64", "int4-g128") stores the projections quantized,
        layer by layer while loading (int8 also on GPUs); see `llama3.quant`. "none" keeps float
        weights. Left out, a quantized GGUF runs as its quant (Q4 blocks as int4, other quants as
        int8) and a float checkpoint as float unless it would not fit in memory (then int8);
        `auto_quantize=False` turns those defaults off. `self.loaded.weights_note` says which.

        Device defaults to CUDA when available, else CPU; dtype to bfloat16 on CUDA (float16 without
        bf16 support) and float32 on CPU. `max_seq_len` defaults to the model's trained context,
        capped to what the KV cache for `max_batch_size` sequences fits in free memory.

        `adapter`: a LoRA adapter folder (PEFT format: `llama3 finetune --out`, or PEFT/TRL's
        `save_pretrained`) run unmerged over the weights as loaded, float or quantized; the base
        is not changed (`llama3 merge` writes merged weights).
        """
        if max_batch_size < 1:
            raise InvalidRequestError(
                f"max_batch_size must be at least 1, got {max_batch_size}", "use 1 or more"
            )
        if max_seq_len is not None and max_seq_len < 2:
            raise InvalidRequestError(
                f"max_seq_len must be at least 2, got {max_seq_len}", "use 2 or more"
            )
        lm = load(
            path,
            device=device,
            dtype=dtype,
            tokenizer_path=tokenizer_path,
            progress=progress,
            quantize=quantize,
            tensor_parallel=tensor_parallel,
            auto_quantize=auto_quantize,
        )
        if adapter is not None:
            from ..lora import load_adapter

            load_adapter(lm.model, adapter)
            lm.weights_note += f"; LoRA adapter {adapter} (unmerged)"
        if max_seq_len is None:
            max_seq_len = default_max_seq_len(
                lm.checkpoint.args, max_batch_size, lm.dtype, lm.device
            )
        log.info(
            "loaded %s (%s) in %.2f s; %s",
            lm.checkpoint.path,
            lm.checkpoint.format,
            lm.load_seconds,
            lm.weights_note,
        )
        return cls(
            lm.model,
            lm.tokenizer,
            max_seq_len=max_seq_len,
            max_batch_size=max_batch_size,
            seed=seed,
            loaded=lm,
        )

    def compile(self, batch_sizes: Sequence[int] | None = None) -> float:
        """Decode with a `torch.compile`d step over a static cache (see `model.compiled`).

        Compiles the step now for `batch_sizes` (default: 1 .. max_batch_size; `[]` compiles
        nothing now, each shape on first use). Returns the seconds spent compiling. Raises
        `UnsupportedFormatError` where torch.compile cannot run. A CPU model with int8 weights
        decodes through the native layer kernel (`model.native_decode`), faster than any compiled
        graph of it: nothing is compiled then (returns 0).
        """
        from ..model import native_decode
        from ..model.compiled import CompiledDecoder, compile_available

        if native_decode.eligible(self.model):
            log.info("decode steps run the native CPU layer kernel: nothing to compile")
            return 0.0
        why = compile_available()
        if self.model.tp is not None:
            why = "a tensor-parallel model decodes eagerly (its all-reduces are not compiled)"
        if why:
            raise UnsupportedFormatError(why, "run without --compile")
        self._decoder = CompiledDecoder(self.model, self.max_batch_size, self.max_seq_len)
        if batch_sizes is None:
            batch_sizes = range(1, self.max_batch_size + 1)
        return self._decoder.warm_up(batch_sizes)

    @property
    def formatter(self) -> ChatFormatter:
        """The model's chat format: Meta's for a Llama 3 tokenizer, else the shipped Jinja template."""
        if self._formatter is None:
            from ..tokenizer import chat_formatter

            self._formatter = chat_formatter(self.tokenizer)
        return self._formatter

    # ---- beyond Meta -----------------------------------------------------------------------------
    def _params(
        self, params: SamplingParams | Sequence[SamplingParams], n: int
    ) -> list[SamplingParams]:
        ps = [params] * n if isinstance(params, SamplingParams) else list(params)
        # Requests without a seed draw one from this object's stream, so a build(seed=...) run is
        # reproducible end to end.
        return [p if p.seed is not None else _with_seed(p, self._rng.getrandbits(63)) for p in ps]

    def _check_batch(self, n: int) -> None:
        if n > self.max_batch_size:
            raise InvalidRequestError(
                f"{n} prompts exceed max_batch_size={self.max_batch_size}",
                "pass fewer prompts per call or load with a larger max_batch_size",
            )

    def encode_prompts(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
        return [self.tokenizer.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts]

    def stream(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] = DEFAULT_PARAMS,
    ) -> Iterator[TokenEvent]:
        """Token events for a batch of text prompts or token-id prompts, as they are generated."""
        self._check_batch(len(prompts))
        toks = self.encode_prompts(prompts)
        return iter(
            BatchGeneration(
                self.model,
                self.tokenizer,
                toks,
                self._params(params, len(toks)),
                max_seq_len=self.max_seq_len,
                decoder=self._decoder,
            )
        )

    def complete(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] = DEFAULT_PARAMS,
    ) -> list[GenerationResult]:
        self._check_batch(len(prompts))
        toks = self.encode_prompts(prompts)
        return generate(
            self.model,
            self.tokenizer,
            toks,
            self._params(params, len(toks)),
            max_seq_len=self.max_seq_len,
            decoder=self._decoder,
        )

    def chat(
        self,
        dialogs: Sequence[Dialog],
        params: SamplingParams | Sequence[SamplingParams] = DEFAULT_PARAMS,
        *,
        tools: Sequence[Any] | None = None,
        parallel_tool_calls: bool = True,
    ) -> list[GenerationResult]:
        """Answer each dialog; `result.message` is the assistant message. With `tools` (OpenAI
        tools or built-in names like "brave_search"), the prompt offers them and calls the model
        makes are parsed into `message["tool_calls"]` (OpenAI shape, arguments a JSON string)."""
        if not tools:
            results = self.complete(
                [self.formatter.encode_dialog_prompt(d) for d in dialogs], params
            )
            for r in results:
                r.message = {"role": "assistant", "content": r.text}
            return results
        from ..tokenizer.chat_format import PYTHON_TAG
        from ..tools.parse import parse_answer
        from ..tools.prompt import encode_with_tools
        from ..tools.spec import parse_tools

        parsed_tools = parse_tools(tools)
        names = [t.name for t in parsed_tools]
        prompts = [encode_with_tools(self.formatter, d, parsed_tools) for d in dialogs]  # type: ignore[arg-type]
        results = self.complete(prompts, params)
        for r in results:
            r.message = {"role": "assistant", "content": r.text}
            if r.finish_reason == "stop":
                # the text skips special tokens: put a leading python_tag back
                tag = self.tokenizer.special_tokens.get(PYTHON_TAG)
                text = (PYTHON_TAG if r.tokens[:1] == [tag] else "") + r.text
                answer = parse_answer(text, names, parallel=parallel_tool_calls)
                if answer.calls:
                    r.message = {
                        "role": "assistant",
                        "content": answer.content,
                        "tool_calls": [c.openai() for c in answer.calls],
                    }
        return results

    def stream_chat(
        self,
        dialogs: Sequence[Dialog],
        params: SamplingParams | Sequence[SamplingParams] = DEFAULT_PARAMS,
    ) -> Iterator[TokenEvent]:
        return self.stream([self.formatter.encode_dialog_prompt(d) for d in dialogs], params)

    def guard(
        self,
        conversation: Dialog,
        role: str | None = None,
        *,
        version: int | None = None,
        exclude: Sequence[str] = (),
        add: Sequence[str | tuple[str, str]] = (),
    ) -> Verdict:
        """Classify `conversation` with this model as a Llama Guard model: role "User" judges
        the last user turn, "Agent" the last answer (default: the last turn's). See llama3.guard."""
        from ..guard import Guard

        g = Guard(self, version=version, exclude=exclude, add=add)
        return g.classify(conversation, role)  # type: ignore[arg-type]

    # ---- Meta's API ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompt_tokens: list[list[int]],
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        """Meta's `generate`: tokens cut before the first stop token; with `echo`, prompt included.

        Returns (tokens per prompt, logprobs per prompt or None). Logprobs are of the raw model
        distribution; with `echo` the first prompt token's entry is 0.0, as in Meta's code.
        """
        self._check_batch(len(prompt_tokens))
        params = SamplingParams(
            max_tokens=max(1, max_gen_len),
            temperature=temperature,
            top_p=top_p,
            logprobs=0 if logprobs else None,
            echo=echo and logprobs,
        )
        results = generate(
            self.model,
            self.tokenizer,
            prompt_tokens,
            self._params(params, len(prompt_tokens)),
            max_seq_len=self.max_seq_len,
            decoder=self._decoder,
        )
        stops = set(self.tokenizer.stop_tokens)
        out_tokens, out_logprobs = [], []
        for r in results:
            toks, lps = list(r.tokens), list(r.logprobs or [])
            if r.finish_reason == "stop" and toks and toks[-1] in stops:
                toks, lps = toks[:-1], lps[: len(toks) - 1]
            if echo:
                toks = r.prompt_tokens + toks
                lps = (r.prompt_logprobs or []) + lps
            out_tokens.append(toks)
            out_logprobs.append(lps)
        return out_tokens, (out_logprobs if logprobs else None)

    def text_completion(
        self,
        prompts: list[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: int | None = None,
        logprobs: bool = False,
        echo: bool = False,
    ) -> list[CompletionPrediction]:
        if max_gen_len is None:
            max_gen_len = self.max_seq_len - 1
        prompt_tokens = [
            self.tokenizer.encode(x, bos=self.tokenizer.add_bos, eos=False) for x in prompts
        ]
        toks, lps = self.generate(prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo)
        if logprobs:
            return [
                {
                    "generation": self.tokenizer.decode(t),
                    "tokens": [self.tokenizer.decode([x]) for x in t],
                    "logprobs": lp,
                }
                for t, lp in zip(toks, lps or [])
            ]
        return [{"generation": self.tokenizer.decode(t)} for t in toks]

    def chat_completion(
        self,
        dialogs: list[Dialog],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: int | None = None,
        logprobs: bool = False,
    ) -> list[ChatPrediction]:
        if max_gen_len is None:
            max_gen_len = self.max_seq_len - 1
        prompt_tokens = [self.formatter.encode_dialog_prompt(d) for d in dialogs]
        toks, lps = self.generate(prompt_tokens, max_gen_len, temperature, top_p, logprobs)
        out: list[ChatPrediction] = []
        for i, t in enumerate(toks):
            pred: ChatPrediction = {
                "generation": {"role": "assistant", "content": self.tokenizer.decode(t)}
            }
            if logprobs:
                pred["tokens"] = [self.tokenizer.decode([x]) for x in t]
                pred["logprobs"] = (lps or [])[i]
            out.append(pred)
        return out


def _with_seed(p: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(p, seed=seed)
