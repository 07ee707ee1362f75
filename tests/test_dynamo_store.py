"""DynamoStateStore against the real DynamoDB Local: atomic counts, shared circuits, outages."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from berry_shared.backend_state import CircuitState, ErrorClass
from berry_shared.config import Settings
from berry_shared.state import create_store
from berry_shared.state.dynamo import DynamoStateStore, make_client

SETTINGS = Settings(circuit_breaker_failure_threshold=3, circuit_breaker_timeout_seconds=60)


async def started(env, settings: Settings = SETTINGS) -> DynamoStateStore:
    store = DynamoStateStore(settings, env.table, env.endpoint)
    await store.start()
    return store


def shared_item(env, key: str) -> dict:
    client = make_client(env.endpoint)
    return client.get_item(
        TableName=env.table, Key={"pk": {"S": "backend"}, "sk": {"S": key}}, ConsistentRead=True
    ).get("Item", {})


async def test_env_selects_the_dynamodb_store_and_creates_the_table(dynamodb_env) -> None:
    store = create_store(SETTINGS)
    assert isinstance(store, DynamoStateStore)
    await store.start()
    try:
        tables = make_client(dynamodb_env.endpoint).list_tables()["TableNames"]
        assert dynamodb_env.table in tables
        assert store.status().healthy
    finally:
        await store.close()


async def test_concurrent_writers_lose_no_counts(dynamodb_env) -> None:
    stores = [await started(dynamodb_env) for _ in range(3)]
    now = time.time()

    async def hammer(store: DynamoStateStore, n: int) -> None:
        for i in range(n):
            store.record_success("p:m", 5.0, now)
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the background flusher interleave
        await store.sync()

    await asyncio.gather(*(hammer(s, 400) for s in stores))
    for store in stores:
        await store.close()
    item = shared_item(dynamodb_env, "p:m")
    assert int(item["requests"]["N"]) == 1200
    # Confidence rose to the cap; the stored sum of changes was clamped, not left at +hundreds.
    assert float(item["conf"]["N"]) == pytest.approx(1.0 - 0.8)


async def test_an_open_circuit_reaches_another_instance_within_a_second(dynamodb_env) -> None:
    a, b = await started(dynamodb_env), await started(dynamodb_env)
    try:
        now = time.time()
        for _ in range(3):
            a.record_failure("p:m", ErrorClass.SERVER, now)
        assert a.state("p:m").circuit(now, SETTINGS) is CircuitState.OPEN
        seen_at = None
        started_at = time.monotonic()
        while time.monotonic() - started_at < 3:
            if b.state("p:m").circuit(time.time(), SETTINGS) is CircuitState.OPEN:
                seen_at = time.monotonic() - started_at
                break
            await asyncio.sleep(0.02)
        assert seen_at is not None and seen_at < 1.5
        assert b.state("p:m").consecutive_failures == 3
        assert b.state("p:m").confidence == pytest.approx(a.state("p:m").confidence)
    finally:
        await a.close()
        await b.close()


async def test_only_one_instance_wins_the_half_open_trial(dynamodb_env) -> None:
    settings = Settings(circuit_breaker_failure_threshold=1, circuit_breaker_timeout_seconds=0.3)
    stores = [await started(dynamodb_env, settings) for _ in range(4)]
    try:
        stores[0].record_failure("p:m", ErrorClass.NETWORK, time.time())
        await stores[0].sync()
        for store in stores[1:]:
            await store.sync()
        await asyncio.sleep(0.4)  # half-open now
        now = time.time()
        wins = await asyncio.gather(*(s.acquire_trial("p:m", now, 5) for s in stores))
        assert sorted(wins) == [False, False, False, True]
    finally:
        for store in stores:
            await store.close()


async def test_rate_limits_count_across_instances_exactly(dynamodb_env) -> None:
    a, b = await started(dynamodb_env), await started(dynamodb_env)
    try:
        windows = [(3600, 25), (86400, 1000)]
        now = time.time()
        results = await asyncio.gather(
            *((a if i % 2 else b).count_request("alice", windows, now) for i in range(60))
        )
        assert sum(1 for wait in results if wait is None) == 25
        refused = [wait for wait in results if wait is not None]
        assert all(0 < wait <= 3600 + 1 for wait in refused)
        # Another user has their own budget.
        assert await a.count_request("bob", windows, now) is None
    finally:
        await a.close()
        await b.close()


async def test_outage_keeps_serving_locally_and_catches_up(restartable_dynamodb) -> None:
    server = restartable_dynamodb
    env = SimpleNamespace(endpoint=server.endpoint, table="berry-outage")
    store = await started(env)
    try:
        now = time.time()
        for _ in range(5):
            store.record_success("p:m", 10.0, now)
        await store.sync()
        server.stop()
        for _ in range(7):
            store.record_success("p:m", 10.0, time.time())
        await store.sync()  # fails: the deltas are kept
        assert store.status().healthy is False
        assert "local view" in store.status().detail
        # Rate limits and trials are decided locally meanwhile: no error reaches a caller.
        assert await store.count_request("carol", [(60, 2)], time.time()) is None
        assert await store.acquire_trial("p:m", time.time(), 5) is True
        server.restart()
        deadline = time.monotonic() + 10
        while not store.status().healthy:
            assert time.monotonic() < deadline, store.status()
            await asyncio.sleep(0.2)
        await store.sync()
        assert int(shared_item(env, "p:m")["requests"]["N"]) == 12
    finally:
        await store.close()


async def test_unreachable_at_start_up_still_serves(dynamodb_env) -> None:
    store = DynamoStateStore(SETTINGS, dynamodb_env.table, "http://127.0.0.1:9")
    await store.start()
    try:
        assert store.status().healthy is False
        store.record_failure("p:m", ErrorClass.TIMEOUT, time.time())
        assert store.state("p:m").failures == 1
        assert await store.count_request("dave", [(60, 1)], time.time()) is None
    finally:
        await store.close()


async def test_a_batch_resent_after_a_lost_answer_counts_once(dynamodb_env) -> None:
    store = await started(dynamodb_env)
    try:
        store.record_success("p:m", 5.0, time.time())
        store.record_success("p:m", 5.0, time.time())
        batch, store._pending = dict(store._pending), {}
        # DynamoDB applied the batch but its answer never arrived: the resend uses the same
        # idempotency token, as sync() does with every unacknowledged batch.
        created = time.time()
        store._send("token-1", batch, created)
        store._send("token-1", batch, created)
        assert int(shared_item(dynamodb_env, "p:m")["requests"]["N"]) == 2
        store._send("token-2", batch, created)  # a genuinely new batch counts
        assert int(shared_item(dynamodb_env, "p:m")["requests"]["N"]) == 4
    finally:
        await store.close()
