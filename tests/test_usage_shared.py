"""Usage, token limits and budgets shared by every instance through DynamoDB Local.

Two Berry instances in this process, each with its own DynamoDB store (its own boto3 client,
batches and rollup), behind the same demo upstream: what one counts, the other enforces and
reports; what is counted survives a restart; ``berry usage`` reads it back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import httpx
import orjson
import pytest

from berry_shared.state.dynamo import DynamoStateStore
from support import ADMIN_TOKEN, ROOT, USER_TOKEN, Berry, build_config, write_config

HTTP = httpx.Client(timeout=30)
PROMPT = [{"role": "user", "content": "one two three"}]  # 3 prompt tokens at the demo
PRICE = {"input_per_million": 2.0, "output_per_million": 10.0}
REQUEST_COST_USD = (3 * 2.0 + 5 * 10.0) / 1_000_000  # 3 prompt and 5 completion tokens
REQUEST_TOKENS = 8


def config_for(upstream: Any, user: dict[str, Any] | None = None) -> Any:
    users = {
        "admin": {"name": "Admin", "token": ADMIN_TOKEN},
        "alice": {
            "name": "Alice",
            "token": USER_TOKEN,
            "allowed_models": ["test-model"],
            **(user or {}),
        },
    }
    return build_config(
        {"x": upstream}, models={"test-model": [{"provider": "x", "price": PRICE}]}, users=users
    )


def ask(berry: Berry) -> httpx.Response:
    return HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps({"model": "test-model", "messages": PROMPT}),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )


def store(berry: Berry) -> DynamoStateStore:
    assert isinstance(berry.gateway.store, DynamoStateStore)
    return berry.gateway.store


def settle(*instances: Berry) -> None:
    """Every instance flushes; then one sums the shards (the rollup every instance reads)
    and every instance reads it: what a few seconds of background sync would do."""

    async def run(coroutine: Any) -> None:
        await coroutine

    for berry in instances:
        asyncio.run_coroutine_threadsafe(run(store(berry).flush()), berry.loop).result(10)
    asyncio.run_coroutine_threadsafe(run(store(instances[0]).rollup()), instances[0].loop).result(
        10
    )
    for berry in instances:
        asyncio.run_coroutine_threadsafe(run(store(berry).sync(read=True)), berry.loop).result(10)


def alice(berry: Berry, days: int = 1) -> dict[str, Any]:
    response = HTTP.get(
        f"{berry.url}/admin/usage",
        params={"user_id": "alice", "days": days},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    return response.json()["users"]["alice"]


@pytest.fixture
def pair(dynamodb_env, make_upstream, start_berry):
    def make(user: dict[str, Any] | None = None) -> tuple[Berry, Berry, Any]:
        upstream = make_upstream(name="x")
        config = config_for(upstream, user)
        return start_berry(config), start_berry(config), config

    return make


def test_usage_counted_by_two_instances_is_one_total_and_survives_a_restart(
    pair, start_berry, dynamodb_env, tmp_path
) -> None:
    first, second, config = pair()
    for berry in (first, second, first):
        assert ask(berry).status_code == 200
    settle(first, second)
    for berry in (first, second):
        usage = alice(berry)
        assert usage["requests"] == 3
        assert usage["prompt_tokens"] == 9
        assert usage["completion_tokens"] == 15
        assert usage["cost_usd"] == pytest.approx(3 * REQUEST_COST_USD)
    # A new instance (a restart, a new Lambda container) reads the same table.
    first.stop()
    second.stop()
    third = start_berry(config)
    assert alice(third)["requests"] == 3
    # `berry usage` reads it too, for a serverless deployment.
    result = subprocess.run(
        [
            str(ROOT / ".venv/bin/berry"),
            "usage",
            "--config",
            str(write_config(config, tmp_path / "c.toml")),
        ],
        env={**os.environ, **dynamodb_env.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("alice  test-model"))
    assert line.split()[2:6] == ["3", "9", "15", "0"]
    assert USER_TOKEN not in result.stdout + result.stderr


def test_a_token_limit_holds_across_instances(pair) -> None:
    # 20 tokens a minute: two requests (16 tokens) through one instance, the third through
    # the other still fits (16 < 20), the fourth must not, whichever instance takes it.
    first, second, _ = pair({"rate_limit": {"tokens_per_minute": 20}})
    assert ask(first).status_code == 200
    assert ask(first).status_code == 200
    settle(first, second)
    assert ask(second).status_code == 200
    settle(first, second)
    for berry in (first, second):
        refused = ask(berry)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "tokens_rate_limit_exceeded"
    rates = HTTP.get(
        f"{second.url}/admin/rate-limit-usage",
        params={"user_id": "alice"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ).json()
    assert rates["usage"]["tokens_this_minute"] in (16, 24)  # a minute may have just rolled
    assert rates["usage"]["requests_this_minute"] is None  # not limited: not counted fleet-wide


def test_a_budget_holds_across_instances(pair) -> None:
    first, second, _ = pair({"monthly_budget_usd": 2.5 * REQUEST_COST_USD})
    assert ask(first).status_code == 200
    assert ask(second).status_code == 200
    settle(first, second)
    # Spent 2 of 2.5 requests' worth: one more is admitted, wherever it arrives.
    assert ask(second).status_code == 200
    settle(first, second)
    for berry in (first, second):
        refused = ask(berry)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "insufficient_quota"


def test_budget_overshoot_across_instances_stays_within_the_sync_bound(pair, monkeypatch) -> None:
    """Without help: two instances, requests alternating at about 10 per second, a budget
    for 10. The README's bound: the limit plus what the fleet answers during one flush, one
    rollup and one refresh (about 1 + 3 + 1 s)."""
    first, second, _ = pair({"monthly_budget_usd": 9.5 * REQUEST_COST_USD})
    statuses = []
    started = time.monotonic()
    for index in range(80):
        statuses.append(ask((first, second)[index % 2]).status_code)
        time.sleep(0.1)
    rate = len(statuses) / (time.monotonic() - started)
    admitted = statuses.count(200)
    print(f"budget for 10: {admitted} admitted at {rate:.1f} requests/s")  # for the README
    assert statuses.count(429) == len(statuses) - admitted
    assert admitted >= 10
    assert admitted <= 10 + rate * (1 + 3 + 1), (admitted, rate)
    assert statuses[-10:] == [429] * 10  # and then it holds
