"""When to hedge: a second attempt on another backend once the first is slower than usual.

The delay comes from what is normal for the backend being waited on: a high quantile of its
recent time to first byte (for a stream) or to the whole answer (for a plain request), within
the configured floor and ceiling. Only answers count: an attempt cancelled because another
answered first says the backend was slow that time, which is exactly what the delay must not
learn to expect (a backend that stalls on 5% of requests would otherwise push its own 95th
percentile into the stalls, and hedge too late). Until a backend has enough samples the
ceiling applies, so a working backend's normal latency does not trigger hedges, while one that
accepts requests and never answers costs at most the ceiling. Samples are kept per process:
the delay needs recent local evidence, not a shared view.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .config import HedgingSettings

# Recent samples per backend and request kind; old ones fall out.
WINDOW = 100


@dataclass(slots=True)
class _Samples:
    values: deque[float]
    # The quantile is recomputed only after this many new samples.
    stale: int = 0
    cached: float | None = None


class LatencyTracker:
    """Recent upstream latencies per backend and request kind, in seconds."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, bool], _Samples] = {}

    def add(self, backend_key: str, stream: bool, seconds: float) -> None:
        samples = self._samples.get((backend_key, stream))
        if samples is None:
            samples = self._samples[(backend_key, stream)] = _Samples(deque(maxlen=WINDOW))
        samples.values.append(seconds)
        samples.stale += 1

    def quantile(self, backend_key: str, stream: bool, q: float, min_samples: int) -> float | None:
        """The ``q`` quantile of the recent samples; None with fewer than ``min_samples``."""
        samples = self._samples.get((backend_key, stream))
        if samples is None or len(samples.values) < min_samples:
            return None
        if samples.cached is None or samples.stale >= max(1, len(samples.values) // 10):
            ordered = sorted(samples.values)
            samples.cached = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
            samples.stale = 0
        return samples.cached

    def hedge_delay(self, backend_key: str, stream: bool, hedging: HedgingSettings) -> float:
        """Seconds to wait for a first byte from ``backend_key`` before starting a hedge."""
        usual = self.quantile(backend_key, stream, hedging.delay_quantile, hedging.min_samples)
        if usual is None:
            return hedging.max_delay_seconds
        return min(hedging.max_delay_seconds, max(hedging.min_delay_seconds, usual))
