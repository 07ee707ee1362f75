"""SmartAI over real HTTP: failover for every failure mode, circuits, recovery, shares."""

from __future__ import annotations

import math
import time
from collections import Counter

import httpx
import openai
import orjson
import pytest

from support import USER_TOKEN, Berry, build_config, closed_port

# One pooled client: a fresh httpx client per call costs ~20 ms of TLS context set-up.
HTTP = httpx.Client(timeout=20)
MESSAGES = [{"role": "user", "content": "hi"}]
# The failing backend is in the preferred priority tier, so SmartAI always tries it first.
FAILING_FIRST = {"exploration_ratio": 0.0}


def chat(berry: Berry, stream: bool = False, **extra) -> httpx.Response:
    body = {"model": "test-model", "messages": MESSAGES, "stream": stream, **extra}
    return HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
        timeout=20,
    )


def failing_pair(make_upstream, start_berry, settings=None, **bad_behaviour):
    bad = make_upstream(name="bad", **bad_behaviour)
    good = make_upstream(name="good")
    config = build_config(
        {"bad": bad, "good": good},
        models={"test-model": [{"provider": "bad"}, {"provider": "good", "priority": 1}]},
        settings=settings,
        smart_ai=FAILING_FIRST,
    )
    return bad, good, start_berry(config)


FAILURES = [
    {"mode": "fail", "failure_status": 500},
    {"mode": "fail", "failure_status": 503},
    {"mode": "fail", "failure_status": 401},
    {"mode": "fail", "failure_status": 404},
    {"mode": "fail", "failure_status": 429},
    {"mode": "invalid_json"},
    {"mode": "wrong_content_type"},
    {"mode": "close"},
    {"mode": "cut_stream"},
]


@pytest.mark.parametrize(
    ("behaviour", "stream"),
    [
        pytest.param(
            b,
            stream,
            id=f"{'stream' if stream else 'plain'}-{b['mode']}-{b.get('failure_status', '')}",
        )
        for b in FAILURES
        for stream in (False, True)
        # A stream cut after its first bytes cannot fail over: tested on its own below.
        if not (stream and b["mode"] == "cut_stream")
    ],
)
def test_no_client_error_while_a_healthy_backend_remains(
    make_upstream, start_berry, behaviour, stream
) -> None:
    _, good, berry = failing_pair(make_upstream, start_berry, **behaviour)
    for _ in range(8):
        response = chat(berry, stream=stream)
        assert response.status_code == 200, response.text
        assert response.headers["x-berry-backend"] == "good:up-model"
        if stream:
            assert response.text.rstrip().endswith("data: [DONE]")
            assert '"error"' not in response.text
    assert good.stats()["requests"] == 8
    state = berry.state("bad:up-model")
    assert state.failures >= 1
    assert state.confidence < 0.8


def test_refused_connections_fail_over(make_upstream, start_berry) -> None:
    good = make_upstream(name="good")
    config = build_config(
        {"good": good, "gone": good},
        models={"test-model": [{"provider": "gone", "weight": 10}, {"provider": "good"}]},
        smart_ai=FAILING_FIRST,
    )
    gone = config.providers["gone"].model_copy(
        update={"base_url": f"http://127.0.0.1:{closed_port()}/v1"}
    )
    berry = start_berry(config.model_copy(update={"providers": {**config.providers, "gone": gone}}))
    state = berry.state("gone:up-model")
    for _ in range(50):  # weight 10 against 1: "gone" is drawn first most of the time
        response = chat(berry)
        assert response.status_code == 200
        assert response.headers["x-berry-backend"] == "good:up-model"
        if state.consecutive_failures >= 2:
            break
    assert state.last_error == "network"
    assert state.consecutive_failures == 2
    # Two refusals cost it so much confidence that most traffic now goes to "good" first.
    weights = HTTP.get(f"{berry.url}/smart-ai/models/test-model/weights").json()
    backends = {b["provider"]: b for b in weights["models"][0]["backends"]}
    assert backends["gone"]["selection_share"] < 0.35 < 0.65 < backends["good"]["selection_share"]
    assert not backends["gone"]["health_details"]["healthy"]


def test_timeouts_fail_over_within_the_deadline(make_upstream, start_berry) -> None:
    _, _, berry = failing_pair(make_upstream, start_berry, mode="hang")
    provider = berry.gateway.config.providers["bad"]
    assert provider.timeout_seconds == 30
    # Rebuild with a short per-provider timeout on the hanging backend.
    berry.stop()
    config = berry.gateway.config
    config = config.model_copy(
        update={
            "providers": {
                **config.providers,
                "bad": provider.model_copy(update={"timeout_seconds": 0.5}),
            }
        }
    )
    berry = start_berry(config)
    started = time.perf_counter()
    response = chat(berry)
    assert response.status_code == 200
    assert response.headers["x-berry-attempts"] == "2"
    assert time.perf_counter() - started < 5
    assert berry.state("bad:up-model").last_error == "timeout"


def test_slow_first_byte_of_a_stream_fails_over(make_upstream, start_berry) -> None:
    _, _, berry = failing_pair(
        make_upstream,
        start_berry,
        settings={"request_timeout_seconds": 10},
        first_byte_delay_ms=3000,
    )
    config = berry.gateway.config
    berry.stop()
    slow = config.providers["bad"].model_copy(update={"timeout_seconds": 0.5})
    berry = start_berry(config.model_copy(update={"providers": {**config.providers, "bad": slow}}))
    response = chat(berry, stream=True)
    assert response.status_code == 200
    assert response.headers["x-berry-backend"] == "good:up-model"
    assert response.headers["x-berry-attempts"] == "2"


def test_stream_cut_after_it_started_ends_with_an_sse_error(make_upstream, start_berry) -> None:
    only = make_upstream(name="only", mode="cut_stream")
    berry = start_berry(build_config({"only": only}))
    response = chat(berry, stream=True)
    assert response.status_code == 200  # the stream had started: headers were already sent
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] != "data: [DONE]"
    error = orjson.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_interrupted"
    sdk = openai.OpenAI(base_url=berry.base_url, api_key=USER_TOKEN, max_retries=0)
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model="test-model", messages=MESSAGES, stream=True))
    # The server records the broken stream as it finishes, just after the client saw the event.
    deadline = time.monotonic() + 2
    while berry.state("only:up-model").failures < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert berry.state("only:up-model").failures == 2


def test_every_backend_failing_gives_one_clear_error(make_upstream, start_berry) -> None:
    a = make_upstream(name="a", mode="fail", failure_status=500)
    b = make_upstream(name="b", mode="fail", failure_status=502)
    berry = start_berry(build_config({"a": a, "b": b}))
    response = chat(berry)
    assert response.status_code == 502
    assert response.headers["x-berry-attempts"] == "2"
    assert float(response.headers["x-berry-overhead-ms"]) >= 0
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "a:up-model" in error["message"] and "b:up-model" in error["message"]
    # Each backend was tried once: retries never hit the same failing backend again.
    assert a.stats()["requests"] == 1 and b.stats()["requests"] == 1


def test_every_backend_hanging_answers_504_at_the_deadline(make_upstream, start_berry) -> None:
    a = make_upstream(name="a", mode="hang")
    berry = start_berry(build_config({"a": a}, settings={"request_timeout_seconds": 1}))
    started = time.perf_counter()
    response = chat(berry)
    assert response.status_code == 504
    assert 0.9 < time.perf_counter() - started < 5
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_all_upstreams_rate_limited_gives_429_with_retry_after(make_upstream, start_berry):
    a = make_upstream(name="a", mode="fail", failure_status=429, retry_after=7)
    berry = start_berry(build_config({"a": a}))
    response = chat(berry)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    # The 429's Retry-After is respected: the backend is cooling down, not hammered.
    again = chat(berry)
    assert again.status_code == 503
    assert 1 <= int(again.headers["retry-after"]) <= 7
    assert a.stats()["requests"] == 1


def test_single_backend_circuit_opens_and_answers_503(make_upstream, start_berry) -> None:
    only = make_upstream(name="only", mode="fail", failure_status=500)
    berry = start_berry(
        build_config(
            {"only": only},
            settings={
                "circuit_breaker_failure_threshold": 3,
                "circuit_breaker_timeout_seconds": 30,
            },
        )
    )
    statuses = [chat(berry).status_code for _ in range(5)]
    assert statuses == [502, 502, 502, 503, 503]
    assert only.stats()["requests"] == 3
    response = chat(berry)
    assert 25 <= int(response.headers["retry-after"]) <= 30
    assert response.json()["error"]["type"] == "service_unavailable"


def test_circuit_half_opens_and_a_healed_backend_ramps_back(make_upstream, start_berry) -> None:
    flaky = make_upstream(name="flaky", mode="fail", failure_status=500)
    steady = make_upstream(name="steady")
    config = build_config(
        {"flaky": flaky, "steady": steady},
        settings={"circuit_breaker_failure_threshold": 2, "circuit_breaker_timeout_seconds": 0.5},
        smart_ai={"exploration_ratio": 0.0},
        models={"test-model": [{"provider": "flaky", "weight": 3}, {"provider": "steady"}]},
    )
    berry = start_berry(config)

    def weight(key: str) -> float:
        body = HTTP.get(f"{berry.url}/smart-ai/models/test-model/weights").json()
        backends = body["models"][0]["backends"]
        return next(
            b["effective_weight"] for b in backends if f"{b['provider']}:{b['model']}" == key
        )

    healthy_weight = weight("flaky:up-model")
    state = berry.state("flaky:up-model")
    for _ in range(40):  # weight 3 to 1: flaky is drawn first most of the time
        assert chat(berry).status_code == 200
        if state.opened_at:
            break
    assert weight("flaky:up-model") == 0.0  # circuit open: the selector gives it nothing
    flaky.behaviour.mode = "ok"
    time.sleep(0.6)  # half-open: the next request is its trial
    response = chat(berry)
    assert response.headers["x-berry-backend"] == "flaky:up-model"
    ramp = [weight("flaky:up-model")]
    for _ in range(4):
        chat(berry, backend="flaky")
        ramp.append(weight("flaky:up-model"))
    assert 0 < ramp[0] < healthy_weight
    assert ramp == sorted(ramp) and ramp[-1] > ramp[0]


def test_background_probes_bring_a_backend_back_without_traffic(make_upstream) -> None:
    from berry_handlers.local import create_app
    from berry_shared.gateway import Gateway
    from support import ServerThread

    flaky = make_upstream(name="flaky", mode="fail", failure_status=500)
    config = build_config(
        {"flaky": flaky},
        settings={
            "circuit_breaker_failure_threshold": 1,
            "circuit_breaker_timeout_seconds": 600,
            "health_check_interval_seconds": 0.1,
            "recovery_check_interval_seconds": 0.2,
            "health_check_timeout_seconds": 2,
        },
    )
    gateway = Gateway(config)
    server = ServerThread(create_app(gateway, background_probes=True)).start()
    try:
        deadline = time.monotonic() + 5
        while gateway.store.state("flaky:up-model").failures == 0:
            assert time.monotonic() < deadline, "the idle probe never ran"
            time.sleep(0.05)
        assert HTTP.get(f"{server.url}/health").status_code == 503
        flaky.behaviour.mode = "ok"
        while HTTP.get(f"{server.url}/health").status_code != 200:
            assert time.monotonic() < deadline + 5, "the recovery probe never healed it"
            time.sleep(0.05)
        probe = flaky.stats()["last_request"]["body"]
        assert probe["max_tokens"] == 1 and probe["model"] == "up-model"
    finally:
        server.stop()


def test_per_request_backends_are_never_probed(make_upstream) -> None:
    import asyncio

    from berry_shared.gateway import Gateway

    paid = make_upstream(name="paid")
    config = build_config(
        {"paid": paid}, models={"test-model": [{"provider": "paid", "billing_mode": "per_request"}]}
    )
    gateway = Gateway(config)
    assert asyncio.run(gateway.prober.run_once()) == []
    assert paid.stats()["requests"] == 0


def test_priority_tiers_use_the_backup_only_when_the_primary_is_out(
    make_upstream, start_berry
) -> None:
    primary = make_upstream(name="primary")
    backup = make_upstream(name="backup")
    config = build_config(
        {"primary": primary, "backup": backup},
        models={
            "test-model": [
                {"provider": "primary", "priority": 0},
                {"provider": "backup", "priority": 1, "weight": 50},
            ]
        },
        settings={"circuit_breaker_failure_threshold": 1},
    )
    berry = start_berry(config)
    assert {chat(berry).headers["x-berry-backend"] for _ in range(30)} == {"primary:up-model"}
    primary.behaviour.mode = "fail"
    assert chat(berry).headers["x-berry-backend"] == "backup:up-model"  # failover
    assert {chat(berry).headers["x-berry-backend"] for _ in range(10)} == {"backup:up-model"}


def test_pick_frequencies_match_selection_share(make_upstream, start_berry) -> None:
    upstreams = {name: make_upstream(name=name) for name in ("x", "y", "z")}
    config = build_config(
        upstreams,
        models={
            "test-model": [
                {"provider": "x", "weight": 3},
                {"provider": "y", "weight": 1},
                {"provider": "z", "weight": 1, "tags": ["premium"]},
            ]
        },
        smart_ai={"exploration_ratio": 0.5},
    )
    berry = start_berry(config)
    for name in upstreams:  # warm up: every backend at full confidence, stable shares
        for _ in range(3):
            chat(berry, backend=name)

    def current_shares() -> dict[str, float]:
        body = HTTP.get(f"{berry.url}/smart-ai/models/test-model/weights").json()
        backends = body["models"][0]["backends"]
        return {f"{b['provider']}:{b['model']}": b["selection_share"] for b in backends}

    # The share reported just before each request is that request's pick probability, so
    # the expected count is their sum, exact even if latency jitter moves weights a little.
    n = 1500
    expected: Counter[str] = Counter()
    variance: Counter[str] = Counter()
    picks: Counter[str] = Counter()
    for _ in range(n):
        shares = current_shares()
        assert abs(sum(shares.values()) - 1) < 1e-5  # each share is rounded to 6 places
        for key, share in shares.items():
            expected[key] += share
            variance[key] += share * (1 - share)
        picks[chat(berry).headers["x-berry-backend"]] += 1
    assert set(picks) == set(expected)  # every backend was picked, none unknown
    for key in expected:
        assert abs(picks[key] - expected[key]) <= 5 * math.sqrt(variance[key]) + 1, (
            key,
            picks,
            expected,
        )
    # Half of x's share by effective weight (3 x 1.1 bonus of 5.4), half by configured
    # weight (3 of 5): about 0.61.
    assert 0.55 < expected["x:up-model"] / n < 0.66


def test_provider_headers_and_retry_settings_are_used(make_upstream, start_berry) -> None:
    # Three backends on one provider, all failing: provider max_retries = 1 allows 2 attempts.
    flaky = make_upstream(name="flaky", mode="fail", failure_status=500)
    config = build_config(
        {"p": flaky},
        models={
            "test-model": [
                {"provider": "p", "model": m} for m in ("up-model", "other-model", "third-model")
            ]
        },
        settings={"max_retries": 5},
    )
    provider = config.providers["p"].model_copy(
        update={
            "max_retries": 1,
            "headers": {"X-Team": "berry-tests"},
            "models": ["up-model", "other-model", "third-model"],
        }
    )
    berry = start_berry(config.model_copy(update={"providers": {"p": provider}}))
    response = chat(berry)
    assert response.status_code == 502
    assert response.headers["x-berry-attempts"] == "2"
    assert flaky.stats()["requests"] == 2
    assert flaky.stats()["last_request"]["headers"]["x-team"] == "berry-tests"


def test_settings_max_retries_caps_the_failover_chain(make_upstream, start_berry) -> None:
    upstreams = {n: make_upstream(name=n, mode="fail", failure_status=503) for n in "abcd"}
    berry = start_berry(build_config(upstreams, settings={"max_retries": 2}))
    response = chat(berry)
    assert response.status_code == 502
    assert response.headers["x-berry-attempts"] == "3"  # the first try and two retries
    assert sum(u.stats()["requests"] for u in upstreams.values()) == 3


@pytest.mark.parametrize("internal_retries", [0, 2])
def test_dropped_connections_are_retried_on_the_same_backend(
    make_upstream, start_berry, internal_retries: int
) -> None:
    dropping = make_upstream(name="dropping", mode="close")
    berry = start_berry(
        build_config({"dropping": dropping}, settings={"max_internal_retries": internal_retries})
    )
    response = chat(berry)
    assert response.status_code == 502
    assert response.headers["x-berry-attempts"] == "1"
    assert dropping.stats()["requests"] == 1 + internal_retries
    assert berry.state("dropping:up-model").failures == 1  # one attempt, one failure


def test_equally_healthy_backends_weighted_3_to_1_share_traffic_75_25(
    make_upstream, start_berry
) -> None:
    """Berry API's docs: weights set the traffic split of equally healthy, equally fast
    backends (default settings: exploration 0.2, which keeps that split)."""
    upstreams = {name: make_upstream(name=name) for name in ("three", "one")}
    config = build_config(
        upstreams,
        models={"test-model": [{"provider": "three", "weight": 3}, {"provider": "one"}]},
    )
    berry = start_berry(config)
    picks: Counter[str] = Counter()
    for _ in range(400):
        response = chat(berry)
        assert response.status_code == 200
        picks[response.headers["x-berry-backend"]] += 1
    share = picks["three:up-model"] / 400
    # 75% expected; 5 standard deviations of a binomial draw of 400 is about 11 points.
    assert 0.64 < share < 0.86, picks
