"""What Berry knows about each backend, and how one outcome changes it.

Pure data and pure transitions: no clock is read and no I/O is done here, so the rules of
confidence and circuit breaking can be tested one step at a time. Times are wall-clock
seconds (``time.time()``) because instances that share state must agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .config import Settings


class ErrorClass(StrEnum):
    """Why an attempt failed; each class has its own confidence penalty."""

    NETWORK = "network"
    TIMEOUT = "timeout"
    AUTH = "auth"
    RATE_LIMIT = "rate_limit"
    SERVER = "server"
    MODEL = "model"


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Exponential moving average weight of a new latency sample.
LATENCY_EMA_ALPHA = 0.2

HOUR = 3600.0
DAY = 24 * HOUR
# Idle time -> how much of the distance from initial_confidence remains (Berry API's steps).
DECAY_STEPS = ((HOUR, 1.0), (6 * HOUR, 0.95), (DAY, 0.9), (3 * DAY, 0.8))
DECAY_FLOOR = 0.7


@dataclass(slots=True)
class BackendState:
    confidence: float
    consecutive_failures: int = 0
    # When the circuit opened; 0 while it is closed. Half-open is derived from the clock.
    opened_at: float = 0.0
    # A trial request holds the half-open backend until this time, so only one runs at a time.
    trial_until: float = 0.0
    # An upstream 429 with Retry-After keeps the backend out until this time.
    cooldown_until: float = 0.0
    latency_ms: float | None = None
    requests: int = 0
    failures: int = 0
    last_request_at: float = 0.0
    last_error: ErrorClass | None = None
    # The latest success and failure: a backend whose latest attempt failed is not healthy.
    last_success_at: float = 0.0
    last_failure_at: float = 0.0

    def circuit(self, now: float, settings: Settings) -> CircuitState:
        if not self.opened_at:
            return CircuitState.CLOSED
        if now - self.opened_at < settings.circuit_breaker_timeout_seconds:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def available_at(self, settings: Settings) -> float:
        """The earliest time this backend may take traffic again (0 if it may now)."""
        until = self.cooldown_until
        if self.opened_at:
            until = max(until, self.opened_at + settings.circuit_breaker_timeout_seconds)
        return until


def decayed_confidence(state: BackendState, now: float, settings: Settings) -> float:
    """Old evidence fades: an idle backend's confidence drifts back toward the initial value."""
    smart = settings.smart_ai
    if not smart.enable_time_decay or not state.last_request_at:
        return state.confidence
    idle = now - state.last_request_at
    keep = DECAY_FLOOR
    for limit, fraction in DECAY_STEPS:
        if idle < limit:
            keep = fraction
            break
    return smart.initial_confidence + (state.confidence - smart.initial_confidence) * keep


def new_state(settings: Settings) -> BackendState:
    return BackendState(confidence=settings.smart_ai.initial_confidence)


def penalty(error: ErrorClass, settings: Settings) -> float:
    adjustments = settings.smart_ai.confidence_adjustments
    return {
        ErrorClass.NETWORK: adjustments.network_error_penalty,
        ErrorClass.TIMEOUT: adjustments.timeout_penalty,
        ErrorClass.AUTH: adjustments.auth_error_penalty,
        ErrorClass.RATE_LIMIT: adjustments.rate_limit_penalty,
        ErrorClass.SERVER: adjustments.server_error_penalty,
        ErrorClass.MODEL: adjustments.model_error_penalty,
    }[error]


def record_success(state: BackendState, latency_ms: float, now: float, settings: Settings) -> None:
    """A request succeeded: raise confidence, close the circuit, fold in the latency."""
    # Faded evidence first, so a success never lowers what the selector saw (nor a failure
    # raise it).
    state.confidence = decayed_confidence(state, now, settings)
    state.confidence = min(
        1.0, state.confidence + settings.smart_ai.confidence_adjustments.success_boost
    )
    state.consecutive_failures = 0
    state.opened_at = 0.0
    state.trial_until = 0.0
    state.requests += 1
    state.last_request_at = now
    state.last_success_at = max(state.last_success_at, now)
    record_latency(state, latency_ms)


def record_latency_floor(state: BackendState, at_least_ms: float) -> None:
    """An attempt was cancelled after ``at_least_ms`` (another backend answered first): its
    latency is at least that, so fold it in if it is more than what is known."""
    if state.latency_ms is None or at_least_ms > state.latency_ms:
        record_latency(state, at_least_ms)


def record_latency(state: BackendState, latency_ms: float) -> None:
    if state.latency_ms is None:
        state.latency_ms = latency_ms
    else:
        state.latency_ms += LATENCY_EMA_ALPHA * (latency_ms - state.latency_ms)


def record_failure(
    state: BackendState,
    error: ErrorClass,
    now: float,
    settings: Settings,
    retry_after: float | None = None,
) -> None:
    """A request failed: lower confidence by the class's penalty, maybe open the circuit.

    A rate limit that says how long to wait is a cooldown, not a breakage: it does not count
    toward the circuit breaker's consecutive failures.
    """
    state.confidence = decayed_confidence(state, now, settings)
    state.confidence = max(
        settings.smart_ai.min_confidence, state.confidence - penalty(error, settings)
    )
    cooldown = error is ErrorClass.RATE_LIMIT and bool(retry_after)
    if not cooldown:
        state.consecutive_failures += 1
    state.requests += 1
    state.failures += 1
    state.last_request_at = now
    state.last_error = error
    state.last_failure_at = max(state.last_failure_at, now)
    state.trial_until = 0.0
    was_trial = state.circuit(now, settings) is CircuitState.HALF_OPEN
    if was_trial or (
        not cooldown and state.consecutive_failures >= settings.circuit_breaker_failure_threshold
    ):
        # A failed trial re-opens for a full timeout; so does reaching the threshold.
        state.opened_at = now
    if retry_after:
        state.cooldown_until = max(state.cooldown_until, now + retry_after)
