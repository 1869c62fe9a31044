"""Prometheus metrics of one gateway, in its own registry (so two apps never share counts).

    >>> metrics = Metrics()
    >>> metrics.observe_request("/v1/chat/completions", "POST", 200, 0.12)
    >>> metrics.observe_attempts("default", [{"engine": "vllm", "error": "EngineUnavailableError"},
    ...                                      {"engine": "openai", "error": None}])
    >>> metrics.observe_usage("openai", {"prompt_tokens": 12, "completion_tokens": 3})
    >>> metrics.observe_cost("openai", 0.0000036)
    >>> text = metrics.exposition().decode()   # text format for GET /metrics
    >>> 'inferline_fallbacks_total{failed_engine="vllm",model="default"} 1.0' in text
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Requests, latency, fallbacks, per-engine errors, tokens and cost."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("inferline_http_requests", "HTTP requests answered.",
                                ["route", "method", "status"], registry=reg)
        self.latency = Histogram("inferline_http_request_duration_seconds",
                                 "Time to answer an HTTP request (streams: to the last byte).",
                                 ["route"], buckets=_BUCKETS, registry=reg)
        self.in_flight = Gauge("inferline_inference_in_flight",
                               "Inference requests being served now.", registry=reg)
        self.fallbacks = Counter("inferline_fallbacks", "Times a chain moved on to its next "
                                 "engine.", ["model", "failed_engine"], registry=reg)
        self.engine_errors = Counter("inferline_engine_errors", "Failed engine attempts.",
                                     ["engine", "error"], registry=reg)
        self.tokens = Counter("inferline_tokens", "Tokens processed, by engine and kind.",
                              ["engine", "kind"], registry=reg)
        self.overhead = Histogram(
            "inferline_gateway_overhead_seconds", "Time a request that called an engine spent "
            "in the gateway, not waiting on the engine (queue wait included).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
            registry=reg)
        self.cost = Counter("inferline_cost", "USD spent, by engine (prices from settings; "
                            "cache hits and replays cost 0).", ["engine"], registry=reg)

        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (labels take a lock and checks)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._child(self.requests, route, method, str(status)).inc()
        self._child(self.latency, route).observe(seconds)

    def observe_attempts(self, model: str, attempts: Sequence[dict[str, Any]]) -> None:
        """Count each failed attempt as an engine error, and as a fallback if one followed."""
        for i, attempt in enumerate(attempts):
            if attempt.get("error"):
                self.engine_errors.labels(attempt["engine"], attempt["error"]).inc()
                if i + 1 < len(attempts):
                    self.fallbacks.labels(model, attempt["engine"]).inc()

    def observe_usage(self, engine: str, usage: dict[str, int] | None) -> None:
        if usage:
            self._child(self.tokens, engine, "prompt").inc(usage.get("prompt_tokens") or 0)
            self._child(self.tokens, engine, "completion").inc(
                usage.get("completion_tokens") or 0)

    def observe_cost(self, engine: str, usd: float | None) -> None:
        self._child(self.cost, engine).inc(usd or 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
