"""Two real `berry serve` processes on one DynamoDB Local table: one view of the backends."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dynamodb import shared_requests
from support import ADMIN_TOKEN, USER_TOKEN, BerryProcess

HTTP = httpx.Client(timeout=20)
MESSAGES = [{"role": "user", "content": "hi"}]


def write_config(path: Path, bad_url: str, good_url: str, rate_limit: str = "") -> Path:
    path.write_text(f"""
[settings]
circuit_breaker_failure_threshold = 2
circuit_breaker_timeout_seconds = 60
[settings.smart_ai]
exploration_ratio = 0.0
[providers.bad]
name = "Bad"
base_url = "{bad_url}"
api_key = "k-bad"
models = ["up-model"]
[providers.good]
name = "Good"
base_url = "{good_url}"
api_key = "k-good"
models = ["up-model"]
[models.m]
name = "test-model"
[[models.m.backends]]
provider = "bad"
model = "up-model"
weight = 10
[[models.m.backends]]
provider = "good"
model = "up-model"
priority = 1
[users.admin]
name = "Admin"
token = "{ADMIN_TOKEN}"
[users.user]
name = "User"
token = "{USER_TOKEN}"
allowed_models = ["m"]
{rate_limit}
""")
    return path


@pytest.fixture
def serve(dynamodb_env) -> Iterator[Callable[[Path], str]]:
    """Start `berry serve` processes sharing the test's DynamoDB table; returns their URL."""
    processes: list[BerryProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> str:
        processes.append(BerryProcess(config, {**dynamodb_env.env, **(env or {})}))
        return processes[-1].url

    yield start
    for process in processes:
        process.stop()


def chat(url: str, **extra) -> httpx.Response:
    return HTTP.post(
        f"{url}/v1/chat/completions",
        json={"model": "test-model", "messages": MESSAGES, **extra},
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )


def backend(url: str, provider: str) -> dict:
    body = HTTP.get(f"{url}/smart-ai/models/test-model/weights").json()
    return next(b for b in body["models"][0]["backends"] if b["provider"] == provider)


def test_a_circuit_opened_through_one_instance_holds_on_the_other(
    make_upstream, serve, tmp_path
) -> None:
    bad = make_upstream(name="bad", mode="fail", failure_status=500)
    good = make_upstream(name="good")
    config = write_config(tmp_path / "config.toml", bad.base_url, good.base_url)
    one, two = serve(config), serve(config)
    for _ in range(2):
        assert chat(one).status_code == 200  # bad fails, good serves
    assert backend(one, "bad")["health_details"]["circuit"] == "open"
    opened = time.monotonic()
    while backend(two, "bad")["health_details"]["circuit"] != "open":
        assert time.monotonic() - opened < 2.0, "the other instance never saw the circuit open"
        time.sleep(0.05)
    tried = bad.stats()["requests"]
    response = chat(two)
    assert response.headers["x-berry-backend"] == "good:up-model"
    assert response.headers["x-berry-attempts"] == "1"
    assert bad.stats()["requests"] == tried  # instance two never called the open backend


def test_weights_agree_on_both_instances(make_upstream, serve, tmp_path) -> None:
    bad = make_upstream(name="bad", mode="fail", failure_status=503)
    good = make_upstream(name="good")
    config = write_config(tmp_path / "config.toml", bad.base_url, good.base_url)
    one, two = serve(config), serve(config)
    chat(one)
    for _ in range(3):
        chat(two)

    def agree() -> bool:
        for provider in ("bad", "good"):
            a, b = backend(one, provider), backend(two, provider)
            if (
                a["confidence"] != pytest.approx(b["confidence"], abs=1e-6)
                or a["effective_weight"] != pytest.approx(b["effective_weight"], abs=1e-6)
                or a["health_details"]["total_requests"] != b["health_details"]["total_requests"]
            ):
                return False
        return True

    # Both flushed, one summed the shards into the rollup, both read it: the statistics'
    # staleness bound is the rollup period (3 s) plus a refresh, and a little competition.
    started = time.monotonic()
    while not agree():
        assert time.monotonic() - started < 8.0, "the instances never agreed"
        time.sleep(0.2)
    # The shared counts are exactly what the upstreams saw, from both instances together.
    assert backend(one, "bad")["health_details"]["total_failures"] == bad.stats()["requests"]
    assert backend(one, "good")["health_details"]["total_requests"] == 4
    assert good.stats()["requests"] == 4


def test_a_rate_limit_counts_requests_through_both(make_upstream, serve, tmp_path) -> None:
    up = make_upstream(name="up")
    config = write_config(
        tmp_path / "config.toml",
        up.base_url,
        up.base_url,
        rate_limit="[users.user.rate_limit]\nrequests_per_hour = 12\n",
    )
    one, two = serve(config), serve(config)
    started_hour = int(time.time() // 3600)
    statuses = [chat(one if i % 2 else two).status_code for i in range(30)]
    if int(time.time() // 3600) != started_hour:
        pytest.skip("crossed an hour boundary; the windows moved under the test")
    assert statuses.count(200) == 12
    assert statuses.count(429) == 18
    assert statuses[:12] == [200] * 12


def test_dynamodb_outage_during_traffic_fails_no_request(
    make_upstream, serve, tmp_path, restartable_dynamodb
) -> None:
    up = make_upstream(name="up")
    config = write_config(
        tmp_path / "config.toml",
        up.base_url,
        up.base_url,
        rate_limit="[users.user.rate_limit]\nrequests_per_day = 100000\n",
    )
    server = restartable_dynamodb
    url = serve(config, {"DYNAMODB_ENDPOINT": server.endpoint})
    failures: list[int] = []
    sent = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal sent
        client = httpx.Client(timeout=20)
        while not stop.is_set():
            response = client.post(
                f"{url}/v1/chat/completions",
                json={"model": "test-model", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {USER_TOKEN}"},
            )
            sent += 1
            if response.status_code != 200:
                failures.append(response.status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(1.0)
        server.stop()
        deadline = time.monotonic() + 10
        while HTTP.get(f"{url}/health").json()["state_store"]["healthy"]:
            assert time.monotonic() < deadline, "/health never said the store is degraded"
            time.sleep(0.1)
        health = HTTP.get(f"{url}/health").json()
        assert health["status"] == "degraded"
        assert "local view" in health["state_store"]["detail"]
        time.sleep(1.5)  # more traffic while DynamoDB is down
        server.restart()
        while not HTTP.get(f"{url}/health").json()["state_store"]["healthy"]:
            assert time.monotonic() < deadline + 15, "the store never came back"
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(30)
    assert failures == []
    assert sent > 50
    # It caught up: the deltas held through the outage reached the table, none lost.
    deadline = time.monotonic() + 5
    while True:
        shared = shared_requests(server.endpoint, os.environ["BERRY_STATE_TABLE"])
        if shared == up.stats()["requests"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shared == up.stats()["requests"] == sent
