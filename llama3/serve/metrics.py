"""Prometheus metrics for the server, on a registry of its own (two apps in one process never clash).

Counters and histograms are fed by the request handlers; the engine gauges (running and waiting
requests, KV-cache blocks and usage, prefix-cache hit rate) are read from the engine at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..engine.engine import EngineStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "llama3_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("llama3_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("llama3_generation_tokens", "Tokens generated", registry=r)
        # per served model: the base under its own name, each LoRA adapter under its name
        self.model_requests = Counter(
            "llama3_model_requests",
            "Requests accepted, by served model (the base or a LoRA adapter)",
            ["model"],
            registry=r,
        )
        self.model_generation_tokens = Counter(
            "llama3_model_generation_tokens",
            "Tokens generated, by served model (the base or a LoRA adapter)",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "llama3_time_to_first_token_seconds",
            "Time from request to first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "llama3_inter_token_latency_seconds",
            "Time between consecutive tokens of a request",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "llama3_e2e_request_latency_seconds",
            "Time from request to its last token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # the safety filter (--guard): one count per decision, per flagged category, and its time
        self.guard_decisions = Counter(
            "llama3_guard_decisions", "Guard decisions", ["stage", "verdict"], registry=r
        )
        self.guard_categories = Counter(
            "llama3_guard_unsafe_categories",
            "Categories the guard flagged",
            ["stage", "category"],
            registry=r,
        )
        self.guard_seconds = Histogram(
            "llama3_guard_seconds",
            "Time the guard took per decision",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._stats = stats

        def gauge(name: str, doc: str, read: Callable[[EngineStats], float]) -> None:
            g = Gauge(name, doc, registry=r)
            g.set_function(lambda: read(s) if (s := self._stats()) is not None else 0.0)

        gauge("llama3_requests_running", "Requests in the running batch", lambda s: s.num_running)
        gauge("llama3_requests_waiting", "Requests waiting for a slot", lambda s: s.num_waiting)
        gauge("llama3_kv_cache_blocks", "KV-cache blocks in the pool", lambda s: s.num_blocks)
        gauge(
            "llama3_kv_cache_free_blocks",
            "KV-cache blocks no request holds",
            lambda s: s.num_free_blocks,
        )
        gauge(
            "llama3_kv_cache_usage_ratio",
            "Share of KV-cache blocks held by requests",
            lambda s: s.kv_cache_usage,
        )
        gauge(
            "llama3_prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache / prompt tokens looked up",
            lambda s: s.prefix_cache_hit_rate,
        )
        gauge(
            "llama3_prefix_cache_queried_tokens",
            "Prompt tokens looked up in the prefix cache",
            lambda s: s.prefix_cache_queried_tokens,
        )
        gauge(
            "llama3_prefix_cache_hit_tokens",
            "Prompt tokens served from the prefix cache",
            lambda s: s.prefix_cache_hit_tokens,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
