"""Unit tests for berry_shared.backend_state: confidence updates and the circuit breaker.

Numbers are chosen to be exact in binary floating point (multiples of 1/16), so the
assertions can compare with ``==`` and a wrong penalty or a wrong clamp cannot hide inside
a tolerance. Times start at T0, a realistic wall-clock value (0 is the "closed" sentinel).
"""

from __future__ import annotations

import itertools

import pytest

from berry_shared.backend_state import (
    DAY,
    HOUR,
    LATENCY_EMA_ALPHA,
    BackendState,
    CircuitState,
    ErrorClass,
    new_state,
    penalty,
    record_failure,
    record_success,
)
from berry_shared.config import Backend, ConfidenceAdjustments, Settings, SmartAISettings
from berry_shared.smart_ai import assess

T0 = 1_700_000_000.0

# Every value differs from the default, so a test passing proves the configured value is used.
ADJUSTMENTS = ConfidenceAdjustments(
    success_boost=0.125,
    network_error_penalty=0.25,
    auth_error_penalty=0.5,
    rate_limit_penalty=0.0625,
    server_error_penalty=0.125,
    model_error_penalty=0.375,
    timeout_penalty=0.1875,
)
EXPECTED_PENALTY = {
    ErrorClass.NETWORK: 0.25,
    ErrorClass.AUTH: 0.5,
    ErrorClass.RATE_LIMIT: 0.0625,
    ErrorClass.SERVER: 0.125,
    ErrorClass.MODEL: 0.375,
    ErrorClass.TIMEOUT: 0.1875,
}


def make_settings(
    threshold: int = 3, timeout: float = 45.0, time_decay: bool = False, **smart: object
) -> Settings:
    smart_ai = {
        "initial_confidence": 0.75,
        "min_confidence": 0.0625,
        "enable_time_decay": time_decay,
        "confidence_adjustments": ADJUSTMENTS,
        **smart,
    }
    return Settings(
        circuit_breaker_failure_threshold=threshold,
        circuit_breaker_timeout_seconds=timeout,
        smart_ai=SmartAISettings(**smart_ai),
    )


def open_circuit(state: BackendState, settings: Settings, at: float) -> None:
    """Fail until the circuit opens; the last failure happens at ``at``."""
    n = settings.circuit_breaker_failure_threshold - state.consecutive_failures
    for i in range(n):
        record_failure(state, ErrorClass.SERVER, at - (n - 1 - i), settings)
    assert state.circuit(at, settings) is CircuitState.OPEN


# -- confidence ------------------------------------------------------------------------------


def test_new_state_uses_initial_confidence() -> None:
    state = new_state(make_settings(initial_confidence=0.625))
    assert state.confidence == 0.625
    assert state.consecutive_failures == 0
    assert state.opened_at == 0.0
    assert state.latency_ms is None
    assert state.circuit(T0, make_settings()) is CircuitState.CLOSED


def test_new_state_default_initial_confidence_is_0_8() -> None:
    assert new_state(Settings()).confidence == 0.8


@pytest.mark.parametrize("error", list(ErrorClass))
def test_penalty_reads_the_configured_value(error: ErrorClass) -> None:
    assert penalty(error, make_settings()) == EXPECTED_PENALTY[error]


def test_penalty_defaults_match_spec() -> None:
    defaults = Settings()
    assert {e: penalty(e, defaults) for e in ErrorClass} == {
        ErrorClass.NETWORK: 0.3,
        ErrorClass.AUTH: 0.8,
        ErrorClass.RATE_LIMIT: 0.1,
        ErrorClass.SERVER: 0.2,
        ErrorClass.MODEL: 0.3,
        ErrorClass.TIMEOUT: 0.2,
    }


@pytest.mark.parametrize("error", list(ErrorClass))
def test_failure_lowers_confidence_by_the_class_penalty(error: ErrorClass) -> None:
    settings = make_settings(threshold=10)
    state = new_state(settings)
    record_failure(state, error, T0, settings)
    assert state.confidence == 0.75 - EXPECTED_PENALTY[error]
    assert state.last_error is error
    assert state.consecutive_failures == 1
    assert state.failures == 1
    assert state.requests == 1
    assert state.last_request_at == T0


def test_confidence_clamps_at_min_confidence() -> None:
    settings = make_settings(threshold=100)
    state = new_state(settings)
    record_failure(state, ErrorClass.AUTH, T0, settings)  # 0.75 - 0.5
    assert state.confidence == 0.25
    record_failure(state, ErrorClass.AUTH, T0 + 1, settings)  # would be -0.25
    assert state.confidence == 0.0625
    for i in range(5):
        record_failure(state, ErrorClass.NETWORK, T0 + 2 + i, settings)
        assert state.confidence == 0.0625


def test_min_confidence_is_configurable() -> None:
    settings = make_settings(threshold=100, min_confidence=0.3125)
    state = new_state(settings)
    record_failure(state, ErrorClass.AUTH, T0, settings)
    assert state.confidence == 0.3125


def test_success_raises_confidence_by_success_boost_and_clamps_at_one() -> None:
    settings = make_settings()
    state = new_state(settings)
    record_success(state, 100.0, T0, settings)
    assert state.confidence == 0.875
    record_success(state, 100.0, T0 + 1, settings)
    assert state.confidence == 1.0
    record_success(state, 100.0, T0 + 2, settings)
    assert state.confidence == 1.0
    assert state.requests == 3
    assert state.failures == 0
    assert state.last_request_at == T0 + 2


def test_success_boost_is_configurable() -> None:
    adjustments = ADJUSTMENTS.model_copy(update={"success_boost": 0.0625})
    settings = make_settings(confidence_adjustments=adjustments)
    state = new_state(settings)
    record_success(state, 10.0, T0, settings)
    assert state.confidence == 0.8125


def test_latency_is_an_exponential_moving_average() -> None:
    settings = make_settings()
    state = new_state(settings)
    record_success(state, 100.0, T0, settings)
    assert state.latency_ms == 100.0
    record_success(state, 200.0, T0 + 1, settings)
    assert state.latency_ms == pytest.approx(100.0 + LATENCY_EMA_ALPHA * 100.0)
    assert state.latency_ms == pytest.approx(120.0)


@pytest.mark.parametrize(
    ("idle", "keep"), [(HOUR - 1, 1.0), (HOUR, 0.95), (12 * HOUR, 0.9), (2 * DAY, 0.8)]
)
def test_outcomes_start_from_the_decayed_confidence(idle: float, keep: float) -> None:
    settings = make_settings(time_decay=True)  # initial 0.75
    low = BackendState(confidence=0.25, last_request_at=T0 - idle)
    record_success(low, 100.0, T0, settings)
    # Decayed 0.75 - 0.5 * keep, then + 0.125.
    assert low.confidence == pytest.approx(0.75 - 0.5 * keep + 0.125)
    high = BackendState(confidence=1.0, last_request_at=T0 - idle)
    record_failure(high, ErrorClass.SERVER, T0, settings)
    # Decayed 0.75 + 0.25 * keep, then - 0.125.
    assert high.confidence == pytest.approx(0.75 + 0.25 * keep - 0.125)
    assert low.last_request_at == high.last_request_at == T0


def test_outcomes_use_the_raw_confidence_when_decay_is_off() -> None:
    settings = make_settings(time_decay=False)
    low = BackendState(confidence=0.25, last_request_at=T0 - 30 * DAY)
    record_success(low, 100.0, T0, settings)
    assert low.confidence == 0.375
    high = BackendState(confidence=1.0, last_request_at=T0 - 30 * DAY)
    record_failure(high, ErrorClass.SERVER, T0, settings)
    assert high.confidence == 0.875


def test_failure_does_not_touch_latency() -> None:
    settings = make_settings()
    state = new_state(settings)
    record_success(state, 100.0, T0, settings)
    record_failure(state, ErrorClass.TIMEOUT, T0 + 1, settings)
    assert state.latency_ms == 100.0


# -- circuit breaker -------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
def test_circuit_opens_exactly_at_threshold(threshold: int) -> None:
    settings = make_settings(threshold=threshold)
    state = new_state(settings)
    for i in range(threshold - 1):
        record_failure(state, ErrorClass.NETWORK, T0 + i, settings)
        assert state.circuit(T0 + i, settings) is CircuitState.CLOSED
        assert state.opened_at == 0.0
    last = T0 + threshold - 1
    record_failure(state, ErrorClass.NETWORK, last, settings)
    assert state.consecutive_failures == threshold
    assert state.opened_at == last
    assert state.circuit(last, settings) is CircuitState.OPEN


def test_threshold_one_opens_a_single_backend_on_first_failure() -> None:
    """A model with a single backend still gets a circuit breaker."""
    settings = make_settings(threshold=1)
    backend_state = new_state(settings)
    record_failure(backend_state, ErrorClass.SERVER, T0, settings)
    assert backend_state.circuit(T0 + 1, settings) is CircuitState.OPEN

    (only,) = assess([Backend(provider="p", model="m")], [backend_state], T0 + 1, settings)
    assert only.available is False
    assert only.effective_weight == 0.0


def test_default_threshold_is_five() -> None:
    settings = Settings()
    state = new_state(settings)
    for i in range(4):
        record_failure(state, ErrorClass.SERVER, T0 + i, settings)
    assert state.circuit(T0 + 4, settings) is CircuitState.CLOSED
    record_failure(state, ErrorClass.SERVER, T0 + 4, settings)
    assert state.circuit(T0 + 4, settings) is CircuitState.OPEN


def test_success_between_failures_resets_the_count() -> None:
    settings = make_settings(threshold=3)
    state = new_state(settings)
    record_failure(state, ErrorClass.SERVER, T0, settings)
    record_failure(state, ErrorClass.SERVER, T0 + 1, settings)
    record_success(state, 50.0, T0 + 2, settings)
    assert state.consecutive_failures == 0
    record_failure(state, ErrorClass.SERVER, T0 + 3, settings)
    record_failure(state, ErrorClass.SERVER, T0 + 4, settings)
    assert state.circuit(T0 + 4, settings) is CircuitState.CLOSED
    record_failure(state, ErrorClass.SERVER, T0 + 5, settings)
    assert state.circuit(T0 + 5, settings) is CircuitState.OPEN


def test_circuit_stays_open_for_the_timeout_then_half_opens() -> None:
    settings = make_settings(threshold=2, timeout=45.0)
    state = new_state(settings)
    open_circuit(state, settings, T0)
    assert state.circuit(T0 + 0.0, settings) is CircuitState.OPEN
    assert state.circuit(T0 + 30.0, settings) is CircuitState.OPEN
    assert state.circuit(T0 + 44.999, settings) is CircuitState.OPEN
    assert state.circuit(T0 + 45.0, settings) is CircuitState.HALF_OPEN
    assert state.circuit(T0 + 1000.0, settings) is CircuitState.HALF_OPEN
    assert state.available_at(settings) == T0 + 45.0


def test_default_timeout_is_sixty_seconds() -> None:
    settings = Settings()
    state = new_state(settings)
    for _ in range(5):
        record_failure(state, ErrorClass.SERVER, T0, settings)
    assert state.circuit(T0 + 59.9, settings) is CircuitState.OPEN
    assert state.circuit(T0 + 60.0, settings) is CircuitState.HALF_OPEN


def test_half_open_failure_reopens_for_a_full_timeout() -> None:
    settings = make_settings(threshold=3, timeout=45.0)
    state = new_state(settings)
    open_circuit(state, settings, T0)
    trial_at = T0 + 50.0
    assert state.circuit(trial_at, settings) is CircuitState.HALF_OPEN
    state.trial_until = trial_at + 10.0  # the trial lease
    record_failure(state, ErrorClass.TIMEOUT, trial_at, settings)
    assert state.opened_at == trial_at
    assert state.trial_until == 0.0
    assert state.circuit(trial_at + 44.9, settings) is CircuitState.OPEN
    assert state.circuit(trial_at + 45.0, settings) is CircuitState.HALF_OPEN
    assert state.available_at(settings) == trial_at + 45.0


def test_half_open_failure_reopens_even_below_threshold() -> None:
    """The trial reopens the circuit by itself, whatever the failure count says."""
    settings = make_settings(threshold=3, timeout=45.0)
    state = BackendState(confidence=0.5, consecutive_failures=0, opened_at=T0)
    record_failure(state, ErrorClass.NETWORK, T0 + 46.0, settings)
    assert state.consecutive_failures == 1
    assert state.opened_at == T0 + 46.0
    assert state.circuit(T0 + 47.0, settings) is CircuitState.OPEN


def test_half_open_success_closes_the_circuit_and_resets_failures() -> None:
    settings = make_settings(threshold=3, timeout=45.0)
    state = new_state(settings)
    open_circuit(state, settings, T0)
    state.trial_until = T0 + 50.0
    record_success(state, 80.0, T0 + 46.0, settings)
    assert state.circuit(T0 + 46.0, settings) is CircuitState.CLOSED
    assert state.opened_at == 0.0
    assert state.trial_until == 0.0
    assert state.consecutive_failures == 0
    assert state.available_at(settings) == 0.0
    # Closed again: it takes a whole new run of `threshold` failures to reopen.
    record_failure(state, ErrorClass.SERVER, T0 + 47.0, settings)
    record_failure(state, ErrorClass.SERVER, T0 + 48.0, settings)
    assert state.circuit(T0 + 48.0, settings) is CircuitState.CLOSED


def test_after_recovery_weight_ramps_back_step_by_step() -> None:
    settings = make_settings(threshold=3, timeout=45.0, non_premium_stability_bonus=1.5)
    backend = Backend(provider="p", model="m", weight=2.0)
    state = new_state(settings)
    for i in range(3):
        record_failure(state, ErrorClass.NETWORK, T0 + i, settings)  # 0.5, 0.25, clamp 0.0625
    assert state.confidence == 0.0625
    assert state.circuit(T0 + 2, settings) is CircuitState.OPEN

    now = T0 + 2 + 45.0
    (trial,) = assess([backend], [state], now, settings)
    assert trial.circuit is CircuitState.HALF_OPEN and trial.available

    weights = []
    confidences = []
    for step in range(9):
        record_success(state, 100.0, now + step, settings)
        (c,) = assess([backend], [state], now + step, settings)
        assert c.circuit is CircuitState.CLOSED and c.available
        weights.append(c.effective_weight)
        confidences.append(c.confidence)

    assert confidences == [0.1875, 0.3125, 0.4375, 0.5625, 0.6875, 0.8125, 0.9375, 1.0, 1.0]
    expected = [
        2.0 * 0.05,  # below 0.3: the floor factor
        2.0 * 0.3125 * 0.5,
        2.0 * 0.4375 * 0.5,
        2.0 * 0.5625 * 0.5,
        2.0 * 0.6875 * 0.8,
        2.0 * 0.8125,
        2.0 * 0.9375 * 1.5,  # > 0.9 and not premium: stability bonus
        2.0 * 1.0 * 1.5,
        2.0 * 1.0 * 1.5,
    ]
    assert weights == pytest.approx(expected)
    # Step by step: never down, strictly up until full confidence, and the first step
    # after closing is far below a fresh backend's weight (2.0 * 0.75 * 0.5).
    assert all(b >= a for a, b in itertools.pairwise(weights))
    assert all(b > a for a, b in itertools.pairwise(weights[:8]))
    assert weights[0] < 2.0 * 0.75 * 0.5 / 5


def test_failures_while_open_keep_it_open_from_the_latest_failure() -> None:
    settings = make_settings(threshold=2, timeout=45.0)
    state = new_state(settings)
    open_circuit(state, settings, T0)
    record_failure(state, ErrorClass.SERVER, T0 + 10.0, settings)
    assert state.opened_at == T0 + 10.0
    assert state.circuit(T0 + 50.0, settings) is CircuitState.OPEN


# -- 429 cooldown ---------------------------------------------------------------------------


def test_retry_after_sets_a_cooldown_without_opening_the_circuit() -> None:
    settings = make_settings(threshold=3)
    state = new_state(settings)
    record_failure(state, ErrorClass.RATE_LIMIT, T0, settings, retry_after=30.0)
    assert state.cooldown_until == T0 + 30.0
    assert state.circuit(T0 + 1, settings) is CircuitState.CLOSED
    assert state.available_at(settings) == T0 + 30.0
    assert state.confidence == 0.75 - 0.0625
    assert state.consecutive_failures == 0


def test_retry_after_never_shortens_an_existing_cooldown() -> None:
    settings = make_settings(threshold=10)
    state = new_state(settings)
    record_failure(state, ErrorClass.RATE_LIMIT, T0, settings, retry_after=30.0)
    record_failure(state, ErrorClass.RATE_LIMIT, T0 + 1, settings, retry_after=5.0)
    assert state.cooldown_until == T0 + 30.0
    record_failure(state, ErrorClass.RATE_LIMIT, T0 + 2, settings, retry_after=60.0)
    assert state.cooldown_until == T0 + 62.0


def test_failure_without_retry_after_sets_no_cooldown() -> None:
    settings = make_settings(threshold=10)
    state = new_state(settings)
    record_failure(state, ErrorClass.RATE_LIMIT, T0, settings)
    record_failure(state, ErrorClass.RATE_LIMIT, T0, settings, retry_after=0)
    assert state.cooldown_until == 0.0
    assert state.available_at(settings) == 0.0
    # Without a wait to honour, both count toward the circuit breaker.
    assert state.consecutive_failures == 2


def test_available_at_is_the_later_of_cooldown_and_circuit() -> None:
    settings = make_settings(threshold=1, timeout=45.0)
    # The circuit opens on a server error at T0 (reopens at T0 + 45); a 429 then adds a
    # cooldown, which neither counts nor moves opened_at.
    state = new_state(settings)
    record_failure(state, ErrorClass.SERVER, T0, settings)
    record_failure(state, ErrorClass.RATE_LIMIT, T0 + 1, settings, retry_after=100.0)
    assert state.opened_at == T0
    assert state.consecutive_failures == 1
    assert state.available_at(settings) == T0 + 101.0
    state2 = new_state(settings)
    record_failure(state2, ErrorClass.SERVER, T0, settings)
    record_failure(state2, ErrorClass.RATE_LIMIT, T0 + 1, settings, retry_after=10.0)
    assert state2.cooldown_until == T0 + 11.0
    assert state2.available_at(settings) == T0 + 45.0


@pytest.mark.parametrize("threshold", [1, 5])
def test_rate_limits_with_retry_after_never_open_the_circuit(threshold: int) -> None:
    settings = make_settings(threshold=threshold, timeout=45.0)
    state = new_state(settings)
    for i in range(5):
        record_failure(state, ErrorClass.RATE_LIMIT, T0 + i, settings, retry_after=2.0)
        assert state.circuit(T0 + i, settings) is CircuitState.CLOSED
    assert state.opened_at == 0.0
    assert state.consecutive_failures == 0
    # Still a failure in every other respect.
    assert state.failures == 5
    assert state.requests == 5
    assert state.confidence == 0.75 - 5 * 0.0625
    assert state.last_error is ErrorClass.RATE_LIMIT
    assert state.cooldown_until == T0 + 6.0
    assert state.available_at(settings) == T0 + 6.0


@pytest.mark.parametrize("retry_after", [None, 0], ids=["absent", "zero"])
def test_rate_limits_without_retry_after_open_the_circuit_at_threshold(
    retry_after: float | None,
) -> None:
    settings = make_settings(threshold=5, timeout=45.0)
    state = new_state(settings)
    for i in range(4):
        record_failure(state, ErrorClass.RATE_LIMIT, T0 + i, settings, retry_after=retry_after)
        assert state.circuit(T0 + i, settings) is CircuitState.CLOSED
    record_failure(state, ErrorClass.RATE_LIMIT, T0 + 4, settings, retry_after=retry_after)
    assert state.consecutive_failures == 5
    assert state.opened_at == T0 + 4
    assert state.circuit(T0 + 4, settings) is CircuitState.OPEN
    assert state.cooldown_until == 0.0
    assert state.available_at(settings) == T0 + 4 + 45.0


def test_cooldown_rate_limit_neither_counts_nor_resets_a_run_of_failures() -> None:
    settings = make_settings(threshold=3)
    state = new_state(settings)
    record_failure(state, ErrorClass.SERVER, T0, settings)
    record_failure(state, ErrorClass.SERVER, T0 + 1, settings)
    record_failure(state, ErrorClass.RATE_LIMIT, T0 + 2, settings, retry_after=1.0)
    assert state.consecutive_failures == 2
    assert state.circuit(T0 + 2, settings) is CircuitState.CLOSED
    record_failure(state, ErrorClass.SERVER, T0 + 3, settings)
    assert state.consecutive_failures == 3
    assert state.opened_at == T0 + 3


def test_failed_half_open_trial_reopens_even_on_a_cooldown_rate_limit() -> None:
    """Only the threshold ignores 429 cooldowns; a failed trial re-opens the circuit."""
    settings = make_settings(threshold=3, timeout=45.0)
    state = new_state(settings)
    open_circuit(state, settings, T0)
    trial_at = T0 + 50.0
    assert state.circuit(trial_at, settings) is CircuitState.HALF_OPEN
    record_failure(state, ErrorClass.RATE_LIMIT, trial_at, settings, retry_after=60.0)
    assert state.consecutive_failures == 3
    assert state.opened_at == trial_at
    assert state.cooldown_until == trial_at + 60.0
    assert state.available_at(settings) == trial_at + 60.0
    assert state.circuit(trial_at + 44.0, settings) is CircuitState.OPEN
