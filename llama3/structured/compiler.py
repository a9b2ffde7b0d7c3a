"""Compiling a `GuidedDecoding` into a grammar llguidance runs, with an LRU cache per tokenizer.

llguidance was chosen over xgrammar and outlines-core (BENCHMARKS.md, "Structured output"):
it refuses a JSON-schema keyword it cannot enforce by name instead of ignoring it, so an output
it lets through always validates, and it compiles a schema in about a millisecond. Compiling
here means building the grammar and one matcher from it (where llguidance reports every error);
each sequence gets a copy of that matcher.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import any_to_lark

from ..errors import InvalidRequestError
from ..tokenizer.base import BaseTokenizer
from .spec import GuidedDecoding
from .vocab import TokenVocab, token_vocab

#: compiled constraints kept per tokenizer
CACHE_SIZE = 256
#: JSON whitespace between tokens: none or one space, never runs of newlines a sampled small model
#: can loop on until max_tokens cuts the JSON (a schema's own "x-guidance" may override it)
JSON_DEFAULTS: dict[str, Any] = {"whitespace_pattern": "[ ]?"}


@dataclass(frozen=True)
class CompiledGuide:
    key: str
    #: a fresh matcher of the grammar; sequences take `deep_copy`s of it
    template: llguidance.LLMatcher


@dataclass
class CacheStats:
    compiles: int = 0
    hits: int = 0


class _Tokenizer:
    """The duck-typed tokenizer `llguidance.TokenizerWrapper` reads."""

    def __init__(self, tokenizer: BaseTokenizer, vocab: TokenVocab) -> None:
        self.eos_token_id = vocab.stop_ids[0] if vocab.stop_ids else tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.tokens = list(vocab.token_bytes)
        self.special_token_ids = sorted(vocab.special_ids)
        self._encode = tokenizer.encode

    def __call__(self, s: str) -> list[int]:  # re-tokenizes text the grammar forces
        return self._encode(s, bos=False, eos=False)


class GuideCompiler:
    """Compiles constraints for one tokenizer; thread-safe (request threads compile at admission
    while the engine thread copies matchers)."""

    def __init__(self, tokenizer: BaseTokenizer, cache_size: int = CACHE_SIZE) -> None:
        self.vocab = token_vocab(tokenizer)
        if not self.vocab.stop_ids:
            raise InvalidRequestError(
                "structured output needs a tokenizer with a stop token",
                "use a model whose tokenizer declares an EOS / end-of-turn token",
                param="response_format",
            )
        self.tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(_Tokenizer(tokenizer, self.vocab)),
            n_vocab=self.vocab.size,
            eos_token=list(self.vocab.stop_ids),
        )
        self.cache_size = cache_size
        self.stats = CacheStats()
        self._cache: OrderedDict[str, CompiledGuide] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, guided: GuidedDecoding) -> CompiledGuide:
        key = guided.key
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return hit
        compiled = CompiledGuide(key, self._matcher(guided))
        with self._lock:
            self.stats.compiles += 1
            self._cache[key] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _matcher(self, guided: GuidedDecoding) -> llguidance.LLMatcher:
        what, param = _describe(guided)
        try:
            grammar = _grammar(guided)
        except Exception as e:  # noqa: BLE001 - the GBNF converter raises bare Exceptions
            raise _invalid(what, str(e), param) from None
        m = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if not m.is_error():
            m.compute_bitmask()  # a grammar that matches nothing fails on its first mask
        if m.is_error():
            raise _invalid(what, m.get_error(), param)
        return m


def _grammar(guided: GuidedDecoding) -> str:
    M = llguidance.LLMatcher
    if guided.json_schema is not None:
        if not isinstance(guided.json_schema, dict):
            raise ValueError("a JSON schema must be a JSON object")
        return M.grammar_from_json_schema(json.dumps(guided.json_schema), defaults=JSON_DEFAULTS)
    if guided.json_object:
        return M.grammar_from_json_schema('{"type": "object"}', defaults=JSON_DEFAULTS)
    if guided.regex is not None:
        return M.grammar_from_regex(guided.regex)
    return M.grammar_from_lark(any_to_lark(str(guided.grammar)))


def _describe(guided: GuidedDecoding) -> tuple[str, str]:
    if guided.json_schema is not None:
        what, param = "JSON schema", "response_format"
    elif guided.json_object:
        what, param = "JSON object format", "response_format"
    elif guided.regex is not None:
        what, param = "regular expression", "guided_regex"
    else:
        what, param = "grammar", "guided_grammar"
    return what, guided.param or param


def _invalid(what: str, why: str, param: str) -> InvalidRequestError:
    why = why.strip().splitlines()[0] if why.strip() else "rejected by the grammar engine"
    if why.startswith("NoExtension"):
        why = "it matches no text at all"
    if "Unimplemented keys" in why or "nsupported" in why:
        msg = f"the {what} uses a feature structured output does not support: {why}"
        hint = "remove that keyword from the schema (the output could not be guaranteed to match)"
    else:
        msg = f"the {what} is invalid: {why}"
        hint = f"fix the {what}"
    return InvalidRequestError(msg, hint, param=param)


_compilers: weakref.WeakKeyDictionary[BaseTokenizer, GuideCompiler] = weakref.WeakKeyDictionary()
_compilers_lock = threading.Lock()


def compiler_for(tokenizer: BaseTokenizer) -> GuideCompiler:
    """The one `GuideCompiler` of `tokenizer` (built on first use: ~0.1-0.5 s for the vocab;
    callers waiting for it while another thread builds it wait for that build)."""
    with _compilers_lock:
        c = _compilers.get(tokenizer)
        if c is None:
            c = _compilers[tokenizer] = GuideCompiler(tokenizer)
        return c


def warm_up(tokenizer: BaseTokenizer) -> threading.Thread:
    """Build `tokenizer`'s compiler in a background thread, so that the first constrained request
    does not pay for it (a request that comes earlier waits for this build, not a second one)."""

    def build() -> None:
        try:
            compiler_for(tokenizer)
        except InvalidRequestError:  # no stop token: each constrained request says so itself
            pass

    t = threading.Thread(target=build, name="llama3-guide-warm-up", daemon=True)
    t.start()
    return t
