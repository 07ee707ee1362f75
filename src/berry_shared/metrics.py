"""Counters Berry keeps about itself, exported in Prometheus text format (``berry_api_*``).

Each gateway owns its own registry, so several gateways (tests, one process per Lambda
container) never collide. Label children are cached, so recording an attempt on the hot path
is a few dictionary lookups and additions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the output and no dashboard of Berry API's uses them.
disable_created_metrics()

NAMESPACE = "berry_api"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# Returns (backend key, is healthy, effective weight) for every configured backend.
BackendSnapshot = Callable[[], list[tuple[str, bool, float]]]


class _BackendGauges(Collector):
    """Health and effective weight are read when scraped, never pushed per request."""

    def __init__(self, snapshot: BackendSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        health = GaugeMetricFamily(
            f"{NAMESPACE}_backend_health_status",
            "1 when the backend is healthy (circuit closed, confidence >= 0.3), else 0",
            labels=["backend"],
        )
        weight = GaugeMetricFamily(
            f"{NAMESPACE}_backend_effective_weight",
            "The weight SmartAI uses for the backend right now",
            labels=["backend"],
        )
        for key, healthy, effective in self._snapshot():
            health.add_metric([key], 1.0 if healthy else 0.0)
            weight.add_metric([key], effective)
        yield health
        yield weight


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests answered",
            ["method", "endpoint", "status"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (headers sent)",
            ["method", "endpoint"],
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being answered",
            namespace=NAMESPACE,
            registry=r,
        )
        self.backend_requests = Counter(
            "backend_request_count_total",
            "Attempts sent to a backend",
            ["backend"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.backend_errors = Counter(
            "backend_error_count_total",
            "Failed attempts by error class",
            ["backend", "error_type"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.backend_latency = Histogram(
            "backend_latency_seconds",
            "Upstream time of successful attempts (to first byte)",
            ["backend"],
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.backend_ttft = Histogram(
            "backend_time_to_first_token_seconds",
            "Stream time to the first chunk",
            ["backend"],
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.tokens = Counter(
            "tokens_total",
            "Tokens reported by upstream usage",
            ["backend", "type"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.chat_requests = 0
        self.chat_successes = 0

    def watch_backends(self, snapshot: BackendSnapshot) -> None:
        self.registry.register(_BackendGauges(snapshot))

    def attempt_succeeded(self, backend: str, latency_s: float, streamed: bool) -> None:
        self.backend_requests.labels(backend).inc()
        self.backend_latency.labels(backend).observe(latency_s)
        if streamed:
            self.backend_ttft.labels(backend).observe(latency_s)

    def attempt_failed(self, backend: str, error_type: str) -> None:
        self.backend_requests.labels(backend).inc()
        self.backend_errors.labels(backend, error_type).inc()

    def add_usage(self, backend: str, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            count = usage.get(kind)
            if isinstance(count, int) and count > 0:
                self.tokens.labels(backend, kind.removesuffix("_tokens")).inc(count)

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)
