"""SmartAI: which backend serves a request, and in what order the others are tried.

Pure functions over a model's backends and their ``BackendState``. The weight a backend gets
is ``weight x confidence factor x latency factor x stability bonus``; ``selection_shares`` is
the one policy that turns weights into the probability of serving the next request, and
``plan_attempts`` draws from it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .backend_state import (  # noqa: F401 - decay names re-exported for callers
    DAY,
    DECAY_FLOOR,
    DECAY_STEPS,
    HOUR,
    BackendState,
    CircuitState,
    decayed_confidence,
)
from .config import Backend, Settings
from .errors import retry_after_header

# Confidence below this counts as unhealthy; its factor is the floor below.
UNHEALTHY_CONFIDENCE = 0.3
FLOOR_FACTOR = 0.05
# Latencies are compared with this added to both sides, so jitter of a few milliseconds
# between equally good backends does not move weights; a second's difference does.
LATENCY_GRACE_MS = 100.0
# The least a latency factor can be, so a slow backend is demoted, never starved.
MIN_LATENCY_FACTOR = 0.25

_RNG = random.Random()


def confidence_factor(confidence: float) -> float:
    """Berry API's documented curve: full credit above 0.8, steps below, a floor under 0.3."""
    if confidence >= 0.8:
        return confidence
    if confidence >= 0.6:
        return confidence * 0.8
    if confidence >= UNHEALTHY_CONFIDENCE:
        return confidence * 0.5
    return FLOOR_FACTOR


def latency_factor(latency_ms: float | None, fastest_ms: float | None) -> float:
    if latency_ms is None or fastest_ms is None or latency_ms <= fastest_ms:
        return 1.0
    # Square root: twice as slow costs ~30% of the weight, not half of it.
    ratio = (fastest_ms + LATENCY_GRACE_MS) / (latency_ms + LATENCY_GRACE_MS)
    return max(MIN_LATENCY_FACTOR, math.sqrt(ratio))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A backend with everything the selector decided about it at one instant."""

    backend: Backend
    state: BackendState
    circuit: CircuitState
    confidence: float
    effective_weight: float
    # False while the circuit is open, a 429 cooldown runs, or another request holds the trial.
    available: bool

    @property
    def key(self) -> str:
        return self.backend.key

    @property
    def is_healthy(self) -> bool:
        """Usable now, and the latest evidence is good: a backend whose latest attempt failed
        (no success since) is not healthy, whatever its confidence."""
        state = self.state
        return (
            self.available
            and self.circuit is CircuitState.CLOSED
            and self.confidence >= UNHEALTHY_CONFIDENCE
            and state.last_failure_at <= state.last_success_at
        )


def assess(
    backends: Sequence[Backend],
    states: Sequence[BackendState],
    now: float,
    settings: Settings,
) -> list[Candidate]:
    """Score every backend: circuit, decayed confidence and the weight the selector uses."""
    latencies = [s.latency_ms for s in states if s.latency_ms is not None]
    fastest = min(latencies) if latencies else None
    bonus = settings.smart_ai.non_premium_stability_bonus
    candidates = []
    for backend, state in zip(backends, states, strict=True):
        circuit = state.circuit(now, settings)
        confidence = decayed_confidence(state, now, settings)
        available = (
            circuit is not CircuitState.OPEN
            and state.cooldown_until <= now
            and not (circuit is CircuitState.HALF_OPEN and state.trial_until > now)
        )
        weight = 0.0
        if available:
            weight = (
                backend.weight
                * confidence_factor(confidence)
                * latency_factor(state.latency_ms, fastest)
            )
            if not backend.is_premium and confidence > 0.9:
                weight *= bonus
        candidates.append(Candidate(backend, state, circuit, confidence, weight, available))
    return candidates


def _preferred_tier(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Backends of the best priority (lowest number) that still has a closed circuit."""
    usable = [c for c in candidates if c.available and c.effective_weight > 0]
    closed = [c for c in usable if c.circuit is CircuitState.CLOSED]
    if not closed:
        return usable
    best = min(c.backend.priority for c in closed)
    return [c for c in closed if c.backend.priority == best]


def selection_shares(candidates: Sequence[Candidate], settings: Settings) -> dict[str, float]:
    """The probability that each backend serves the next request: SmartAI's one policy.

    A half-open backend takes the next request as its trial. Otherwise, within the preferred
    priority tier, traffic is drawn at random in proportion to a blend: ``1 - exploration_ratio``
    of it by effective weight (configured weight x health x latency) and ``exploration_ratio``
    by configured weight alone. Equally healthy, equally fast backends therefore share traffic
    exactly as configured (``weight = 0.7`` is 70%), and a demoted backend keeps getting a
    measured trickle, in proportion to its configured weight, so it can earn its weight back.
    ``plan_attempts`` draws from exactly these numbers.
    """
    shares = {c.key: 0.0 for c in candidates}
    trials = [c for c in candidates if c.available and c.circuit is CircuitState.HALF_OPEN]
    if trials:
        shares[trials[0].key] = 1.0
        return shares
    tier = _preferred_tier(candidates)
    if len(tier) <= 1:
        shares.update((c.key, 1.0) for c in tier)
        return shares
    ratio = settings.smart_ai.exploration_ratio
    effective = sum(c.effective_weight for c in tier)
    configured = sum(c.backend.weight for c in tier)
    for c in tier:
        shares[c.key] = (1.0 - ratio) * c.effective_weight / effective + (
            ratio * c.backend.weight / configured
        )
    return shares


def plan_attempts(
    candidates: Sequence[Candidate], settings: Settings, rng: random.Random | None = None
) -> list[Candidate]:
    """The order in which backends are tried for one request; empty if none is available.

    First one drawn by ``selection_shares``; then every other available backend, best tier and
    heaviest first, as failover (and hedging) targets.
    """
    usable = [c for c in candidates if c.available and c.effective_weight > 0]
    if not usable:
        return []
    shares = selection_shares(usable, settings)
    drawn = [c for c in usable if shares[c.key] > 0]
    if len(drawn) == 1:
        first = drawn[0]
    else:
        first = (rng or _RNG).choices(drawn, weights=[shares[c.key] for c in drawn])[0]
    rest = sorted(
        (c for c in usable if c is not first),
        key=lambda c: (
            c.circuit is CircuitState.HALF_OPEN,
            c.backend.priority,
            -shares[c.key],
            -c.effective_weight,
        ),
    )
    return [first, *rest]


def retry_after_seconds(states: Iterable[BackendState], now: float, settings: Settings) -> int:
    """How long until the first unavailable backend may take traffic again (at least 1 s)."""
    waits = [s.available_at(settings) - now for s in states]
    waits = [w for w in waits if w > 0]
    return retry_after_header(min(waits)) if waits else 1
