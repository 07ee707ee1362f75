"""Counters Berry keeps about itself, exported in Prometheus text format (``berry_api_*``).

Recording is plain integer arithmetic on dictionaries: every update happens on the event
loop's thread, so prometheus_client's locked value objects (a mutex per increment, about a
tenth of the hot path's time when measured) are not needed. The numbers are turned into
metric families only when ``/prometheus`` is scraped, through a custom collector.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .usage import NANO_PER_USD, Usage

NAMESPACE = "berry_api"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# Returns (backend key, is healthy, effective weight) for every configured backend.
BackendSnapshot = Callable[[], list[tuple[str, bool, float]]]
Labels = tuple[str, ...]


@dataclass(slots=True)
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class Metrics:
    def __init__(self) -> None:
        self.http_requests: dict[Labels, int] = {}  # (method, endpoint, status)
        self.http_duration: dict[Labels, _Histogram] = {}  # (method, endpoint)
        self.in_flight = 0
        self.backend_requests: dict[Labels, int] = {}  # (backend,)
        self.backend_errors: dict[Labels, int] = {}  # (backend, error_type)
        self.backend_latency: dict[Labels, _Histogram] = {}  # (backend,)
        self.backend_ttft: dict[Labels, _Histogram] = {}  # (backend,)
        self.tokens: dict[Labels, int] = {}  # (backend, type)
        self.user_tokens: dict[Labels, int] = {}  # (user, model, type)
        self.user_cost_nano: dict[Labels, int] = {}  # (user, model)
        self.hedged_requests: dict[Labels, int] = {}  # (model,)
        self.hedge_wins: dict[Labels, int] = {}  # (backend,)
        self.chat_requests = 0
        self.chat_successes = 0
        self._backends: BackendSnapshot = list
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exporter(self))

    # -- recording (hot path) ------------------------------------------------------------------

    def http_answered(self, method: str, endpoint: str, status: int) -> None:
        key = (method, endpoint, str(status))
        self.http_requests[key] = self.http_requests.get(key, 0) + 1

    def http_headers_sent(self, method: str, endpoint: str, seconds: float) -> None:
        _histogram(self.http_duration, (method, endpoint)).observe(seconds)

    def attempt_succeeded(self, backend: str, latency_s: float, streamed: bool) -> None:
        key = (backend,)
        self.backend_requests[key] = self.backend_requests.get(key, 0) + 1
        _histogram(self.backend_latency, key).observe(latency_s)
        if streamed:
            _histogram(self.backend_ttft, key).observe(latency_s)

    def attempt_failed(self, backend: str, error_type: str) -> None:
        self.backend_requests[(backend,)] = self.backend_requests.get((backend,), 0) + 1
        key = (backend, error_type)
        self.backend_errors[key] = self.backend_errors.get(key, 0) + 1

    def add_usage(self, backend: str, usage: Usage | None) -> None:
        if usage is None:
            return
        for kind, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ):
            if count:
                key = (backend, kind)
                self.tokens[key] = self.tokens.get(key, 0) + count

    def user_usage(self, user: str, model: str, usage: Usage, cost_nano: int) -> None:
        """A user's tokens and spend, labelled by the user's config id (never a token)."""
        tokens = self.user_tokens
        for key, count in (
            ((user, model, "prompt"), usage.prompt_tokens),
            ((user, model, "completion"), usage.completion_tokens),
            ((user, model, "cached"), usage.cached_tokens),
        ):
            if count:
                tokens[key] = tokens.get(key, 0) + count
        if cost_nano:
            self.user_cost_nano[(user, model)] = (
                self.user_cost_nano.get((user, model), 0) + cost_nano
            )

    def hedged(self, model: str) -> None:
        """A request of ``model`` started a hedge (a parallel attempt on another backend)."""
        self.hedged_requests[(model,)] = self.hedged_requests.get((model,), 0) + 1

    def hedge_won(self, backend: str) -> None:
        """A hedge attempt on ``backend`` answered before the attempt it was started beside."""
        self.hedge_wins[(backend,)] = self.hedge_wins.get((backend,), 0) + 1

    # -- export -------------------------------------------------------------------------------

    def watch_backends(self, snapshot: BackendSnapshot) -> None:
        """Health and effective weight are read when scraped, never pushed per request."""
        self._backends = snapshot

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)


def _histogram(table: dict[Labels, _Histogram], key: Labels) -> _Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = _Histogram()
    return histogram


class _Exporter(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter(
            "http_requests",
            "HTTP requests answered",
            ["method", "endpoint", "status"],
            m.http_requests,
        )
        yield _histograms(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (headers sent)",
            ["method", "endpoint"],
            m.http_duration,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_http_requests_in_flight",
            "HTTP requests being answered",
            value=m.in_flight,
        )
        yield _counter(
            "backend_request_count", "Attempts sent to a backend", ["backend"], m.backend_requests
        )
        yield _counter(
            "backend_error_count",
            "Failed attempts by error class",
            ["backend", "error_type"],
            m.backend_errors,
        )
        yield _histograms(
            "backend_latency_seconds",
            "Upstream time of successful attempts (to first byte)",
            ["backend"],
            m.backend_latency,
        )
        yield _histograms(
            "backend_time_to_first_token_seconds",
            "Stream time to the first chunk",
            ["backend"],
            m.backend_ttft,
        )
        yield _counter("tokens", "Tokens reported by upstream usage", ["backend", "type"], m.tokens)
        yield _counter(
            "user_tokens",
            "Tokens per user (config id) and model (config key): prompt, completion, cached",
            ["user", "model", "type"],
            m.user_tokens,
        )
        cost = CounterMetricFamily(
            f"{NAMESPACE}_user_cost_usd",
            "Spend per user and model, from backend prices",
            labels=["user", "model"],
        )
        for labels, nano in m.user_cost_nano.items():
            cost.add_metric(list(labels), nano / NANO_PER_USD)
        yield cost
        yield _counter(
            "hedged_requests",
            "Requests that started a hedge: a parallel attempt on another backend",
            ["model"],
            m.hedged_requests,
        )
        yield _counter(
            "hedge_wins",
            "Hedge attempts that answered first (the attempt beside them was cancelled)",
            ["backend"],
            m.hedge_wins,
        )
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
        for key, healthy, effective in m._backends():
            health.add_metric([key], 1.0 if healthy else 0.0)
            weight.add_metric([key], effective)
        yield health
        yield weight


def _counter(name: str, doc: str, labels: list[str], values: dict[Labels, int]) -> Metric:
    family = CounterMetricFamily(f"{NAMESPACE}_{name}", doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _histograms(name: str, doc: str, labels: list[str], values: dict[Labels, _Histogram]) -> Metric:
    family = HistogramMetricFamily(f"{NAMESPACE}_{name}", doc, labels=labels)
    for key, histogram in values.items():
        family.add_metric(list(key), histogram.cumulative(), histogram.total)
    return family
