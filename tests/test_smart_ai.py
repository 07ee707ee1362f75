"""Unit tests for berry_shared.smart_ai: effective weights, selection shares, attempt plans."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from berry_shared import backend_state, smart_ai
from berry_shared.backend_state import (
    BackendState,
    CircuitState,
    ErrorClass,
    record_failure,
    record_success,
)
from berry_shared.config import Backend, ConfidenceAdjustments, Settings, SmartAISettings
from berry_shared.smart_ai import (
    DAY,
    FLOOR_FACTOR,
    HOUR,
    LATENCY_GRACE_MS,
    MIN_LATENCY_FACTOR,
    Candidate,
    assess,
    confidence_factor,
    decayed_confidence,
    latency_factor,
    plan_attempts,
    retry_after_seconds,
    selection_shares,
)

T0 = 1_700_000_000.0
TIMEOUT = 45.0


def make_settings(**smart: object) -> Settings:
    smart.setdefault("enable_time_decay", False)
    return Settings(
        circuit_breaker_failure_threshold=3,
        circuit_breaker_timeout_seconds=TIMEOUT,
        smart_ai=SmartAISettings(**smart),
    )


def backend(name: str, weight: float = 1.0, priority: int = 0, tags: Sequence[str] = ()) -> Backend:
    return Backend(provider=name, model="m", weight=weight, priority=priority, tags=list(tags))


def healthy(confidence: float = 0.8, latency_ms: float | None = None) -> BackendState:
    return BackendState(confidence=confidence, latency_ms=latency_ms)


def opened(at: float = T0 - 10.0, confidence: float = 0.2) -> BackendState:
    """Circuit opened at ``at`` (OPEN at T0 while T0 - at < TIMEOUT)."""
    return BackendState(confidence=confidence, consecutive_failures=3, opened_at=at)


def half_open(trial_until: float = 0.0) -> BackendState:
    return BackendState(
        confidence=0.2, consecutive_failures=3, opened_at=T0 - TIMEOUT - 1, trial_until=trial_until
    )


def by_key(candidates: Sequence[Candidate]) -> dict[str, Candidate]:
    return {c.key: c for c in candidates}


def first_pick_frequencies(
    candidates: Sequence[Candidate], settings: Settings, seed: int, n: int
) -> Counter[str]:
    rng = random.Random(seed)
    return Counter(plan_attempts(candidates, settings, rng)[0].key for _ in range(n))


# -- confidence and latency factors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "factor"),
    [
        (1.0, 1.0),
        (0.9, 0.9),
        (0.8, 0.8),
        (0.7, 0.7 * 0.8),
        (0.6, 0.6 * 0.8),
        (0.5, 0.5 * 0.5),
        (0.3, 0.3 * 0.5),
        (0.29, FLOOR_FACTOR),
        (0.05, FLOOR_FACTOR),
    ],
)
def test_confidence_factor_curve(confidence: float, factor: float) -> None:
    assert confidence_factor(confidence) == pytest.approx(factor)


def test_confidence_factor_is_monotonic() -> None:
    values = [confidence_factor(i / 1000) for i in range(1001)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[0] == FLOOR_FACTOR == 0.05


def test_latency_factor() -> None:
    g = LATENCY_GRACE_MS
    assert latency_factor(None, 100.0) == 1.0
    assert latency_factor(100.0, None) == 1.0
    assert latency_factor(100.0, 100.0) == 1.0
    assert latency_factor(50.0, 100.0) == 1.0
    # sqrt((fast + g) / (slow + g)): four times the (graced) latency -> half the weight.
    assert latency_factor(4 * (100.0 + g) - g, 100.0) == pytest.approx(0.5)
    assert latency_factor(1000.0, 100.0) == pytest.approx(math.sqrt((100 + g) / (1000 + g)))
    # A few ms of jitter barely matters; a second does.
    assert latency_factor(110.0, 100.0) > 0.95
    assert latency_factor(1100.0, 100.0) < 0.5
    # Far slower: floored, never starved.
    assert MIN_LATENCY_FACTOR == 0.25
    assert latency_factor(100_000.0, 100.0) == MIN_LATENCY_FACTOR
    assert latency_factor(16 * (100.0 + g) - g, 100.0) == pytest.approx(MIN_LATENCY_FACTOR)


def test_faster_backend_gets_more_weight() -> None:
    settings = make_settings()
    # The fastest is not listed first: it is found among all backends.
    backends = [backend("slow"), backend("new"), backend("fast"), backend("slower")]
    states = [
        healthy(latency_ms=4 * (100.0 + LATENCY_GRACE_MS) - LATENCY_GRACE_MS),
        healthy(latency_ms=None),
        healthy(latency_ms=100.0),
        healthy(latency_ms=50_000.0),
    ]
    c = by_key(assess(backends, states, T0, settings))
    assert c["fast:m"].effective_weight == pytest.approx(0.8)
    assert c["slow:m"].effective_weight == pytest.approx(0.4)
    assert c["slower:m"].effective_weight == pytest.approx(0.8 * MIN_LATENCY_FACTOR)
    # Unknown latency: factor 1.
    assert c["new:m"].effective_weight == pytest.approx(0.8)
    shares = selection_shares(list(c.values()), settings)
    assert shares["fast:m"] > shares["slow:m"] > shares["slower:m"] > 0


def test_no_latency_known_means_factor_one() -> None:
    settings = make_settings()
    c = assess([backend("a", 3.0), backend("b")], [healthy(), healthy()], T0, settings)
    assert [x.effective_weight for x in c] == pytest.approx([2.4, 0.8])


# -- effective weight ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "weight"),
    [(0.8, 1.6), (0.7, 2 * 0.7 * 0.8), (0.5, 2 * 0.5 * 0.5), (0.2, 2 * FLOOR_FACTOR)],
)
def test_effective_weight_is_weight_times_confidence_factor(
    confidence: float, weight: float
) -> None:
    (c,) = assess([backend("a", 2.0)], [healthy(confidence)], T0, make_settings())
    assert c.effective_weight == pytest.approx(weight)
    assert c.confidence == confidence
    assert c.available
    assert c.is_healthy is (confidence >= 0.3)


def test_stability_bonus_only_for_non_premium_above_0_9() -> None:
    settings = make_settings(non_premium_stability_bonus=1.5)
    backends = [
        backend("plain"),
        backend("prem", tags=["premium"]),
        backend("edge"),
        backend("low"),
        backend("other_tag", tags=["fast"]),
    ]
    states = [healthy(0.95), healthy(0.95), healthy(0.9), healthy(0.85), healthy(0.95)]
    c = by_key(assess(backends, states, T0, settings))
    assert c["plain:m"].effective_weight == pytest.approx(0.95 * 1.5)
    assert c["prem:m"].effective_weight == pytest.approx(0.95)
    assert c["edge:m"].effective_weight == pytest.approx(0.9)  # not > 0.9
    assert c["low:m"].effective_weight == pytest.approx(0.85)
    assert c["other_tag:m"].effective_weight == pytest.approx(0.95 * 1.5)


def test_stability_bonus_default_is_1_1() -> None:
    settings = Settings(smart_ai=SmartAISettings(enable_time_decay=False))
    (c,) = assess([backend("a")], [healthy(1.0)], T0, settings)
    assert c.effective_weight == pytest.approx(1.1)


def test_stability_bonus_shifts_traffic_to_the_cheap_backend() -> None:
    settings = make_settings(non_premium_stability_bonus=1.5, exploration_ratio=0.0)
    backends = [backend("prem", 1.2, tags=["premium"]), backend("plain", 1.0)]
    cands = assess(backends, [healthy(0.95), healthy(0.95)], T0, settings)
    prem, plain = 1.2 * 0.95, 1.0 * 0.95 * 1.5
    assert selection_shares(cands, settings) == pytest.approx(
        {"prem:m": prem / (prem + plain), "plain:m": plain / (prem + plain)}
    )


# -- time decay -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idle", "keep"),
    [
        (0.0, 1.0),
        (HOUR / 2, 1.0),
        (HOUR - 1, 1.0),
        (HOUR, 0.95),
        (3 * HOUR, 0.95),
        (12 * HOUR, 0.9),
        (2 * DAY, 0.8),
        (3 * DAY - 1, 0.8),
        (3 * DAY, 0.7),
        (30 * DAY, 0.7),
    ],
)
def test_time_decay_drifts_toward_initial_confidence(idle: float, keep: float) -> None:
    settings = make_settings(enable_time_decay=True, initial_confidence=0.75)
    low = BackendState(confidence=0.25, last_request_at=T0 - idle)
    high = BackendState(confidence=1.0, last_request_at=T0 - idle)
    assert decayed_confidence(low, T0, settings) == pytest.approx(0.75 - 0.5 * keep)
    assert decayed_confidence(high, T0, settings) == pytest.approx(0.75 + 0.25 * keep)
    # Decay is a view: the stored confidence is unchanged.
    assert low.confidence == 0.25 and high.confidence == 1.0


def test_time_decay_is_used_by_assess() -> None:
    settings = make_settings(enable_time_decay=True, initial_confidence=0.75)
    state = BackendState(confidence=0.25, last_request_at=T0 - 5 * DAY)
    (c,) = assess([backend("a", 2.0)], [state], T0, settings)
    assert c.confidence == pytest.approx(0.75 - 0.5 * 0.7)  # 0.4
    assert c.effective_weight == pytest.approx(2.0 * 0.4 * 0.5)


def test_time_decay_off_leaves_confidence_unchanged() -> None:
    settings = make_settings(enable_time_decay=False, initial_confidence=0.75)
    state = BackendState(confidence=0.25, last_request_at=T0 - 5 * DAY)
    assert decayed_confidence(state, T0, settings) == 0.25
    (c,) = assess([backend("a", 2.0)], [state], T0, settings)
    assert c.confidence == 0.25
    assert c.effective_weight == pytest.approx(2.0 * FLOOR_FACTOR)


def test_time_decay_ignores_a_never_used_backend() -> None:
    settings = make_settings(enable_time_decay=True, initial_confidence=0.75)
    assert decayed_confidence(BackendState(confidence=0.5), T0, settings) == 0.5


def test_time_decay_is_on_by_default() -> None:
    settings = Settings()
    state = BackendState(confidence=0.2, last_request_at=T0 - 2 * DAY)
    assert decayed_confidence(state, T0, settings) == pytest.approx(0.8 - 0.6 * 0.8)


def test_decay_lives_in_backend_state_and_is_re_exported_by_smart_ai() -> None:
    for name in ("decayed_confidence", "HOUR", "DAY", "DECAY_STEPS", "DECAY_FLOOR"):
        assert getattr(smart_ai, name) is getattr(backend_state, name), name
    assert (HOUR, DAY) == (3600.0, 86400.0)
    assert backend_state.DECAY_STEPS == ((HOUR, 1.0), (6 * HOUR, 0.95), (DAY, 0.9), (3 * DAY, 0.8))
    assert backend_state.DECAY_FLOOR == 0.7


def test_recent_success_after_idle_is_not_decayed() -> None:
    settings = make_settings(enable_time_decay=True, initial_confidence=0.75)
    state = BackendState(confidence=0.5, last_request_at=T0 - 12 * HOUR)
    record_success(state, 100.0, T0, settings)
    # The success first folds in 12 h of decay (keep 0.9): 0.75 - 0.25 * 0.9 = 0.525, then
    # adds the boost: 0.625 is stored. A minute later that is recent: no further decay.
    assert state.confidence == pytest.approx(0.625)
    assert state.last_request_at == T0
    assert decayed_confidence(state, T0 + 60, settings) == state.confidence
    # Decay restarts from the success: an hour later, 0.75 - 0.125 * 0.95.
    assert decayed_confidence(state, T0 + HOUR, settings) == pytest.approx(0.63125)


def test_success_after_long_idle_does_not_lower_confidence() -> None:
    settings = Settings(smart_ai=SmartAISettings())  # defaults, time decay on
    state = BackendState(confidence=0.2, last_request_at=T0 - 5 * DAY)
    (before,) = assess([backend("a")], [state], T0, settings)
    assert before.confidence == pytest.approx(0.8 - 0.6 * 0.7)  # 0.38
    assert before.effective_weight == pytest.approx(0.38 * 0.5)
    record_success(state, 100.0, T0, settings)
    (after,) = assess([backend("a")], [state], T0, settings)
    # The boost (0.1) is added to what the selector saw, not to the raw 0.2.
    assert after.confidence == pytest.approx(0.48)
    assert after.effective_weight == pytest.approx(0.48 * 0.5)
    assert state.confidence == pytest.approx(0.48)


def test_failure_after_long_idle_does_not_raise_confidence() -> None:
    settings = Settings(
        smart_ai=SmartAISettings(
            confidence_adjustments=ConfidenceAdjustments(rate_limit_penalty=0.05)
        )
    )
    state = BackendState(confidence=1.0, last_request_at=T0 - 5 * DAY)
    (before,) = assess([backend("a")], [state], T0, settings)
    assert before.confidence == pytest.approx(0.8 + 0.2 * 0.7)  # 0.94
    record_failure(state, ErrorClass.RATE_LIMIT, T0, settings)
    (after,) = assess([backend("a")], [state], T0, settings)
    # The penalty (0.05) is taken from what the selector saw, not from the raw 1.0.
    assert after.confidence == pytest.approx(0.89)
    assert state.confidence == pytest.approx(0.89)


@pytest.mark.parametrize("idle", [0.0, HOUR - 1, HOUR, 5 * HOUR, 12 * HOUR, 2 * DAY, 30 * DAY])
@pytest.mark.parametrize("confidence", [0.05, 0.2, 0.5, 0.8, 0.95, 1.0])
def test_outcome_after_any_idle_moves_the_seen_confidence_the_right_way(
    idle: float, confidence: float
) -> None:
    settings = Settings(smart_ai=SmartAISettings())  # defaults: initial 0.8, boost 0.1
    seen = decayed_confidence(
        BackendState(confidence=confidence, last_request_at=T0 - idle), T0, settings
    )
    good = BackendState(confidence=confidence, last_request_at=T0 - idle)
    record_success(good, 100.0, T0, settings)
    assert decayed_confidence(good, T0, settings) == pytest.approx(min(1.0, seen + 0.1))
    bad = BackendState(confidence=confidence, last_request_at=T0 - idle)
    record_failure(bad, ErrorClass.SERVER, T0, settings)
    assert decayed_confidence(bad, T0, settings) == pytest.approx(max(0.05, seen - 0.2))


# -- availability: circuit, cooldown, trial ---------------------------------------------------


def test_assess_marks_open_half_open_and_held_trials() -> None:
    settings = make_settings()
    backends = [backend(n) for n in ("ok", "open", "half", "held", "expired")]
    states = [
        healthy(),
        opened(),
        half_open(),
        half_open(trial_until=T0 + 5),
        half_open(trial_until=T0 - 1),
    ]
    c = by_key(assess(backends, states, T0, settings))
    assert c["ok:m"].circuit is CircuitState.CLOSED and c["ok:m"].available
    assert c["open:m"].circuit is CircuitState.OPEN and not c["open:m"].available
    assert c["open:m"].effective_weight == 0.0
    assert c["half:m"].circuit is CircuitState.HALF_OPEN and c["half:m"].available
    assert c["half:m"].effective_weight == pytest.approx(FLOOR_FACTOR)
    assert c["held:m"].circuit is CircuitState.HALF_OPEN and not c["held:m"].available
    assert c["held:m"].effective_weight == 0.0
    assert c["expired:m"].available
    assert [x.is_healthy for x in c.values()] == [True, False, False, False, False]


def test_retry_after_cooldown_makes_backend_unavailable_until_then() -> None:
    settings = make_settings()
    state = healthy()
    record_failure(state, ErrorClass.RATE_LIMIT, T0, settings, retry_after=20.0)
    backends = [backend("a"), backend("b")]
    for now, available in [(T0 + 1, False), (T0 + 19.99, False), (T0 + 20.0, True)]:
        a, b = assess(backends, [state, healthy()], now, settings)
        assert a.available is available
        assert a.circuit is CircuitState.CLOSED
        assert (a.effective_weight > 0) is available
        shares = selection_shares([a, b], settings)
        plan = plan_attempts([a, b], settings, random.Random(1))
        if not available:
            assert shares == {"a:m": 0.0, "b:m": 1.0}
            assert [c.key for c in plan] == ["b:m"]
        else:
            assert shares["a:m"] > 0
            assert {c.key for c in plan} == {"a:m", "b:m"}


# -- priority tiers -------------------------------------------------------------------------


def test_lower_priority_number_wins_while_it_has_a_closed_circuit() -> None:
    settings = make_settings()
    backends = [backend("main", 1.0, priority=0), backend("spare", 50.0, priority=1)]
    # Even a weak main backend keeps all first picks while its circuit is closed.
    cands = assess(backends, [healthy(0.1), healthy(1.0)], T0, settings)
    assert selection_shares(cands, settings) == {"main:m": 1.0, "spare:m": 0.0}
    rng = random.Random(7)
    for _ in range(200):
        assert [c.key for c in plan_attempts(cands, settings, rng)] == ["main:m", "spare:m"]


@pytest.mark.parametrize(
    "top_state",
    [opened(), half_open(trial_until=T0 + 5)],
    ids=["open", "trial-held"],
)
def test_next_tier_takes_over_when_top_tier_is_out(top_state: BackendState) -> None:
    settings = make_settings(exploration_ratio=0.3)
    backends = [
        backend("top", 5.0, priority=0),
        backend("b", 1.0, priority=2),
        backend("c", 3.0, priority=2),
        backend("d", 9.0, priority=4),
    ]
    states = [top_state, healthy(), healthy(), healthy()]
    cands = assess(backends, states, T0, settings)
    shares = selection_shares(cands, settings)
    assert shares["top:m"] == 0.0
    assert shares["d:m"] == 0.0
    assert shares["b:m"] == pytest.approx(1 / 4)
    assert shares["c:m"] == pytest.approx(3 / 4)
    plan = plan_attempts(cands, settings, random.Random(3))
    assert "top:m" not in [c.key for c in plan]
    assert plan[-1].key == "d:m"


def test_whole_top_tier_open_hands_over_to_next_tier() -> None:
    settings = make_settings(exploration_ratio=0.0)
    backends = [backend("t1", priority=1), backend("t2", priority=1), backend("n", priority=3)]
    cands = assess(backends, [opened(), opened(T0 - 1), healthy()], T0, settings)
    assert selection_shares(cands, settings) == {"t1:m": 0.0, "t2:m": 0.0, "n:m": 1.0}
    # One top-tier backend back: the tier is preferred again.
    cands = assess(backends, [opened(), healthy(0.4), healthy(1.0)], T0, settings)
    assert selection_shares(cands, settings) == {"t1:m": 0.0, "t2:m": 1.0, "n:m": 0.0}


# -- selection shares -----------------------------------------------------------------------

WEIGHTS = (1.0, 2.0, 5.0)


def three(settings: Settings, weights: Sequence[float] = WEIGHTS) -> list[Candidate]:
    backends = [backend(n, w) for n, w in zip("abc", weights, strict=True)]
    return assess(backends, [healthy() for _ in backends], T0, settings)


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 1.0])
def test_equally_healthy_backends_share_traffic_as_configured(ratio: float) -> None:
    """Berry API's docs: ``weight = 0.7  # 70% of traffic``, whatever the exploration."""
    settings = make_settings(exploration_ratio=ratio)
    shares = selection_shares(three(settings), settings)
    assert shares == pytest.approx({"a:m": 1 / 8, "b:m": 2 / 8, "c:m": 5 / 8})
    assert sum(shares.values()) == pytest.approx(1.0)


def test_weights_three_to_one_give_75_25() -> None:
    settings = Settings(smart_ai=SmartAISettings(enable_time_decay=False))
    cands = assess([backend("a", 3.0), backend("b", 1.0)], [healthy(), healthy()], T0, settings)
    assert selection_shares(cands, settings) == pytest.approx({"a:m": 0.75, "b:m": 0.25})


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 1.0])
def test_exploration_spreads_its_share_by_configured_weight(ratio: float) -> None:
    """A demoted backend keeps ``exploration_ratio`` x its configured share, so it is measured."""
    settings = make_settings(exploration_ratio=ratio)
    backends = [backend("good", 1.0), backend("sick", 3.0)]
    cands = assess(backends, [healthy(1.0), healthy(0.1)], T0, settings)
    good, sick = cands[0].effective_weight, cands[1].effective_weight
    assert sick == pytest.approx(3.0 * FLOOR_FACTOR)
    expected = (1 - ratio) * sick / (good + sick) + ratio * 3 / 4
    assert selection_shares(cands, settings)["sick:m"] == pytest.approx(expected)


def test_selection_shares_default_exploration_is_0_2() -> None:
    settings = Settings(smart_ai=SmartAISettings(enable_time_decay=False))
    assert settings.smart_ai.exploration_ratio == 0.2
    cands = assess([backend("a"), backend("b")], [healthy(1.0), healthy(0.1)], T0, settings)
    ok, low = 1.0 * 1.1, FLOOR_FACTOR  # the default stability bonus
    expected = 0.8 * low / (ok + low) + 0.2 * 0.5
    assert selection_shares(cands, settings)["b:m"] == pytest.approx(expected)


def test_selection_shares_ties_split_evenly() -> None:
    for ratio in (0.0, 0.2):
        settings = make_settings(exploration_ratio=ratio)
        shares = selection_shares(three(settings, (2.0, 2.0, 1.0)), settings)
        assert shares == pytest.approx({"a:m": 0.4, "b:m": 0.4, "c:m": 0.2})
        shares = selection_shares(three(settings, (3.0, 3.0, 3.0)), settings)
        assert shares == pytest.approx({"a:m": 1 / 3, "b:m": 1 / 3, "c:m": 1 / 3})


def test_selection_shares_exclude_unavailable_and_sum_to_one() -> None:
    settings = make_settings(exploration_ratio=0.5)
    backends = [backend("a", 4.0), backend("b", 1.0), backend("c", 100.0)]
    cands = assess(backends, [healthy(), healthy(), opened()], T0, settings)
    shares = selection_shares(cands, settings)
    assert shares == pytest.approx({"a:m": 0.8, "b:m": 0.2, "c:m": 0.0})
    assert sum(shares.values()) == pytest.approx(1.0)


def test_selection_shares_all_zero_when_nothing_is_available() -> None:
    settings = make_settings()
    cands = assess([backend("a"), backend("b")], [opened(), half_open(T0 + 9)], T0, settings)
    assert selection_shares(cands, settings) == {"a:m": 0.0, "b:m": 0.0}
    assert plan_attempts(cands, settings, random.Random(0)) == []


def test_half_open_backend_takes_the_next_request_as_its_trial() -> None:
    settings = make_settings()
    backends = [backend("main", 10.0), backend("sick", 1.0, priority=3), backend("x", 2.0)]
    cands = assess(backends, [healthy(1.0), half_open(), healthy()], T0, settings)
    assert selection_shares(cands, settings) == {"main:m": 0.0, "sick:m": 1.0, "x:m": 0.0}
    rng = random.Random(11)
    for _ in range(100):
        plan = plan_attempts(cands, settings, rng)
        assert [c.key for c in plan] == ["sick:m", "main:m", "x:m"]


# -- statistics: plan_attempts()[0] follows selection_shares ----------------------------------

N_DRAWS = 20_000


def _stat_cases() -> list[tuple[str, Settings, list[Candidate]]]:
    s02 = make_settings(exploration_ratio=0.2)
    s05 = make_settings(exploration_ratio=0.5)
    s1 = make_settings(exploration_ratio=1.0)
    s0 = make_settings(exploration_ratio=0.0)
    bonus = make_settings(exploration_ratio=0.2, non_premium_stability_bonus=1.5)
    premium = assess(
        [backend("prem", 1.2, tags=["premium"]), backend("plain", 1.0), backend("c", 0.5)],
        [healthy(0.95), healthy(0.95), healthy(0.8)],
        T0,
        bonus,
    )
    tiers = assess(
        [backend("a", 1.0), backend("b", 3.0), backend("low", 20.0, priority=1)],
        [healthy(), healthy(0.7, latency_ms=100.0), healthy()],
        T0,
        s05,
    )
    demoted = assess(
        [backend("good", 1.0), backend("sick", 3.0), backend("mid", 2.0)],
        [healthy(1.0), healthy(0.1), healthy(0.65)],
        T0,
        s02,
    )
    slow = assess(
        [backend("fast", 1.0), backend("slow", 1.0), backend("slower", 2.0)],
        [healthy(latency_ms=50.0), healthy(latency_ms=900.0), healthy(latency_ms=3000.0)],
        T0,
        s02,
    )
    return [
        ("demoted", s02, demoted),
        ("slow", s02, slow),
        ("ties", s02, three(s02, (2.0, 2.0, 1.0))),
        ("ties-no-exploration", s0, three(s0, (3.0, 3.0, 1.0))),
        ("unequal", s02, three(s02)),
        ("exploration-0.5", s05, three(s05, (3.0, 1.0, 1.0))),
        ("pure-weights", s1, three(s1)),
        ("premium", bonus, premium),
        ("tiers", s05, tiers),
    ]


@pytest.mark.parametrize(("name", "settings", "cands"), _stat_cases(), ids=lambda v: v)
def test_first_pick_frequencies_match_selection_shares(
    name: str, settings: Settings, cands: list[Candidate]
) -> None:
    shares = selection_shares(cands, settings)
    seed = sum(map(ord, name))
    counts = first_pick_frequencies(cands, settings, seed, N_DRAWS)
    assert sum(counts.values()) == N_DRAWS
    for key, p in shares.items():
        sigma = math.sqrt(p * (1 - p) / N_DRAWS)
        observed = counts[key] / N_DRAWS
        # 5 sigma; a share of exactly 0 or 1 must be observed exactly.
        assert abs(observed - p) <= 5 * sigma + 1e-12, (key, observed, p)


def test_premium_case_expected_shares() -> None:
    """Pins the numbers behind the "premium" statistical case."""
    _, settings, cands = next(case for case in _stat_cases() if case[0] == "premium")
    w = {"prem:m": 1.2 * 0.95, "plain:m": 0.95 * 1.5, "c:m": 0.5 * 0.8}
    configured = {"prem:m": 1.2, "plain:m": 1.0, "c:m": 0.5}
    total, total_configured = sum(w.values()), sum(configured.values())
    expected = {k: 0.8 * v / total + 0.2 * configured[k] / total_configured for k, v in w.items()}
    assert selection_shares(cands, settings) == pytest.approx(expected)


# -- plan_attempts --------------------------------------------------------------------------


def test_plan_contains_every_available_backend_once_and_never_an_open_one() -> None:
    settings = make_settings(exploration_ratio=0.5)
    backends = [
        backend("a", 1.0),
        backend("b", 4.0),
        backend("open", 50.0),
        backend("cool", 50.0),
        backend("p1", 2.0, priority=1),
        backend("p2", 8.0, priority=2),
        backend("held", 50.0),
    ]
    cooling = healthy()
    cooling.cooldown_until = T0 + 30
    states = [healthy(), healthy(), opened(), cooling, healthy(), healthy(), half_open(T0 + 3)]
    cands = assess(backends, states, T0, settings)
    rng = random.Random(5)
    firsts = Counter()
    for _ in range(500):
        plan = [c.key for c in plan_attempts(cands, settings, rng)]
        assert sorted(plan) == ["a:m", "b:m", "p1:m", "p2:m"]
        firsts[plan[0]] += 1
        # Failover order after the pick: best tier first, heaviest first within a tier.
        rest = [k for k in ["b:m", "a:m", "p1:m", "p2:m"] if k != plan[0]]
        assert plan[1:] == rest
    assert set(firsts) == {"a:m", "b:m"}


def test_plan_puts_half_open_first_and_other_half_open_last() -> None:
    settings = make_settings()
    backends = [backend("h1", priority=2), backend("ok", 5.0), backend("h2", 100.0), backend("z")]
    states = [half_open(), healthy(), half_open(), healthy()]
    cands = assess(backends, states, T0, settings)
    for seed in range(20):
        plan = [c.key for c in plan_attempts(cands, settings, random.Random(seed))]
        assert plan == ["h1:m", "ok:m", "z:m", "h2:m"]


def test_plan_is_empty_when_all_are_open() -> None:
    settings = make_settings()
    cands = assess([backend("a"), backend("b")], [opened(T0 - 10), opened(T0 - 30)], T0, settings)
    assert plan_attempts(cands, settings, random.Random(0)) == []


def test_plan_with_single_backend() -> None:
    settings = make_settings(exploration_ratio=0.5)
    cands = assess([backend("a")], [healthy(0.1)], T0, settings)
    for seed in range(10):
        assert [c.key for c in plan_attempts(cands, settings, random.Random(seed))] == ["a:m"]


def test_plan_without_rng_uses_module_rng() -> None:
    settings = make_settings()
    cands = three(settings)
    assert sorted(c.key for c in plan_attempts(cands, settings)) == ["a:m", "b:m", "c:m"]


# -- retry_after_seconds --------------------------------------------------------------------


def test_retry_after_seconds_is_time_until_the_earliest_reopens() -> None:
    settings = make_settings()
    # Open at T0-10 and T0-30 (timeout 45): reopen in 35 s and 15 s.
    assert retry_after_seconds([opened(T0 - 10), opened(T0 - 30)], T0, settings) == 15
    # Fractions round up.
    assert retry_after_seconds([opened(T0 - 10), opened(T0 - 30)], T0 + 0.25, settings) == 15
    assert retry_after_seconds([opened(T0 - 10), opened(T0 - 30)], T0 + 4.5, settings) == 11
    cooling = healthy()
    cooling.cooldown_until = T0 + 5.5
    assert retry_after_seconds([opened(T0 - 10), cooling], T0, settings) == 6


def test_retry_after_seconds_is_at_least_one() -> None:
    settings = make_settings()
    assert retry_after_seconds([opened(T0 - TIMEOUT + 0.1)], T0, settings) == 1
    assert retry_after_seconds([healthy(), half_open(T0 + 4)], T0, settings) == 1
    assert retry_after_seconds([], T0, settings) == 1


def test_retry_after_seconds_uses_the_later_of_circuit_and_cooldown() -> None:
    settings = make_settings()
    state = opened(T0 - 10)  # reopens at T0 + 35
    state.cooldown_until = T0 + 100
    assert retry_after_seconds([state], T0, settings) == 100


def test_retry_after_seconds_is_a_true_ceiling() -> None:
    settings = make_settings()
    # int(x + 0.999) would give 30 here, and a client retrying after 30 s finds it still open.
    state = opened(T0 - TIMEOUT + 30.0005)  # reopens 30.0005 s after T0
    assert state.available_at(settings) - T0 > 30.0
    assert retry_after_seconds([state], T0, settings) == 31
    # A whole number of seconds is not rounded up further.
    assert retry_after_seconds([opened(T0 - TIMEOUT + 30.0)], T0, settings) == 30
