"""Hedged attempts: a backend that stalls does not hold the client, a slow one is not cut.

Real upstreams on loopback. "slow" is weighted so that SmartAI nearly always tries it first;
"fast" answers at once. The demo upstream counts the requests whose client hung up while it
was still working, which is how these tests see that a hedge's loser really was cancelled.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from berry_shared.config import Config
from support import USER_TOKEN, Berry, build_config

HTTP = httpx.Client(timeout=40)
MESSAGES = [{"role": "user", "content": "hi"}]


def chat(berry: Berry, stream: bool) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps({"model": "test-model", "messages": MESSAGES, "stream": stream}),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    return response, time.perf_counter() - started


def slow_first(
    make_upstream: Any,
    start_berry: Any,
    slow: dict[str, Any],
    hedging: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[Any, Any, Berry]:
    """Berry in front of "slow" (weight 100) and "fast" (weight 0.01)."""
    slow_upstream = make_upstream(name="slow", **slow)
    fast_upstream = make_upstream(name="fast")
    config = build_config(
        {"slow": slow_upstream, "fast": fast_upstream},
        models={
            "test-model": [
                {"provider": "slow", "weight": 100},
                {"provider": "fast", "weight": 0.01},
            ]
        },
        settings={**settings, **({"hedging": hedging} if hedging is not None else {})},
        smart_ai={"exploration_ratio": 0.0},
    )
    return slow_upstream, fast_upstream, start_berry(config)


def counter(berry: Berry, name: str, **labels: str) -> float:
    text = HTTP.get(f"{berry.url}/prometheus").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_backend_that_never_answers_costs_little_with_default_settings(
    make_upstream, start_berry
) -> None:
    """Default timeouts (30 s each) and default hedging: the other backend answers at once
    once the hedge starts, stream or not, well inside the deadline."""
    slow, _, berry = slow_first(
        make_upstream, start_berry, {"mode": "hang"}, request_timeout_seconds=30
    )
    settings = berry.gateway.settings
    assert (
        settings.request_timeout_seconds == berry.gateway.config.providers["slow"].timeout_seconds
    )
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda stream: chat(berry, stream), (False, True)))
    for (response, seconds), stream in zip(results, (False, True), strict=True):
        assert response.status_code == 200, response.text
        assert response.headers["x-berry-backend"] == "fast:up-model"
        assert response.headers["x-berry-attempts"] == "2"
        assert settings.hedging.max_delay_seconds <= seconds < 15, seconds
        if stream:
            assert response.text.rstrip().endswith("data: [DONE]")
    # The losers' connections were closed: the hanging upstream saw both clients leave.
    wait_for(lambda: slow.stats()["disconnects"] == 2, 5, "the losers' connections to close")
    assert slow.stats()["in_flight"] == 0
    # A cancelled loser did not fail: no failure, no error class, still healthy.
    state = berry.state("slow:up-model")
    assert (state.failures, state.consecutive_failures, state.last_error) == (0, 0, None)
    # ...but it is known to take at least as long as it was waited for.
    assert state.latency_ms >= settings.hedging.max_delay_seconds * 1000 * 0.9
    assert counter(berry, "berry_api_hedged_requests_total", model="test-model") == 2
    assert counter(berry, "berry_api_hedge_wins_total", backend="fast:up-model") == 2


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_slow_backend_that_is_working_is_not_cut_short(
    make_upstream, start_berry, stream
) -> None:
    """4 s is slow but normal for some models: with default hedging nothing else starts."""
    _, fast, berry = slow_first(make_upstream, start_berry, {"latency_ms": 4000})
    response, seconds = chat(berry, stream)
    assert response.status_code == 200
    assert response.headers["x-berry-backend"] == "slow:up-model"
    assert response.headers["x-berry-attempts"] == "1"
    assert 3.9 < seconds < 8
    assert fast.stats()["requests"] == 0
    assert counter(berry, "berry_api_hedged_requests_total", model="test-model") == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_sometimes_slow_backend_is_hedged_after_its_usual_latency(
    make_upstream, start_berry, stream
) -> None:
    """Every 8th request stalls 3 s. Once the backend's usual latency is known (its 80th
    percentile: tens of milliseconds), a stalled request is hedged after about that long."""
    hedging = {
        "delay_quantile": 0.8,
        "min_samples": 5,
        "min_delay_seconds": 0.05,
        "max_delay_seconds": 1.0,
    }
    slow, _, berry = slow_first(
        make_upstream,
        start_berry,
        {"latency_ms": 20, "stall_every": 8, "stall_ms": 3000},
        hedging,
    )
    durations = []
    for _ in range(32):
        response, seconds = chat(berry, stream)
        assert response.status_code == 200
        durations.append(seconds)
    # Four stalls, none of them reached the client: the first within the 1 s ceiling (too
    # few samples yet), the rest after the learned delay.
    assert max(durations) < 1.5, durations
    assert sorted(durations)[-3] < 0.6, durations
    hedged = counter(berry, "berry_api_hedged_requests_total", model="test-model")
    assert hedged == 4
    assert counter(berry, "berry_api_hedge_wins_total", backend="fast:up-model") == 4
    wait_for(lambda: slow.stats()["disconnects"] == 4, 5, "the stalled requests to be dropped")
    state = berry.state("slow:up-model")
    assert (state.failures, state.last_error) == (0, None)
    assert state.requests == 28  # its successes; the cancelled attempts are not outcomes


def test_hedging_shares_the_retry_budget(make_upstream, start_berry) -> None:
    """max_retries = 0: one attempt per request, so no hedge; the deadline decides."""
    _, fast, berry = slow_first(
        make_upstream,
        start_berry,
        {"mode": "hang"},
        {"min_delay_seconds": 0.1, "max_delay_seconds": 0.3},
        max_retries=0,
        request_timeout_seconds=1.5,
    )
    response, seconds = chat(berry, False)
    assert response.status_code == 504
    assert response.headers["x-berry-attempts"] == "1"
    assert 1.4 < seconds < 4
    assert fast.stats()["requests"] == 0


def test_hedging_can_be_turned_off_per_model(make_upstream, start_berry) -> None:
    slow = make_upstream(name="slow", mode="hang")
    fast = make_upstream(name="fast")
    backends = [{"provider": "slow", "weight": 100}, {"provider": "fast", "weight": 0.01}]
    hedging = {"min_delay_seconds": 0.1, "max_delay_seconds": 0.3}
    config = build_config(
        {"slow": slow, "fast": fast},
        models={"test-model": backends},
        settings={"request_timeout_seconds": 1.5, "hedging": hedging},
        smart_ai={"exploration_ratio": 0.0},
    )
    data = config.model_dump(by_alias=True, exclude_none=True)
    data["models"]["test-model"]["hedging"] = {"enabled": False}
    berry = start_berry(Config.model_validate(data))
    response, _ = chat(berry, False)
    assert response.status_code == 504  # the hanging backend held the whole deadline
    assert fast.stats()["requests"] == 0
    # The same config without the model's override hedges after 0.3 s.
    response, seconds = chat(start_berry(config), False)
    assert response.status_code == 200
    assert response.headers["x-berry-backend"] == "fast:up-model"
    assert seconds < 1.2
