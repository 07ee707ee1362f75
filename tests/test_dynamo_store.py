"""DynamoStateStore against the real DynamoDB Local: atomic counts, shared circuits, outages."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from berry_shared.backend_state import CircuitState, ErrorClass
from berry_shared.config import Settings
from berry_shared.state import create_store
from berry_shared.state.dynamo import DynamoStateStore, StoreTuning, make_client
from dynamodb import eventually, shared_totals

SETTINGS = Settings(circuit_breaker_failure_threshold=3, circuit_breaker_timeout_seconds=60)
# Few shards, so that the tests also see two batches land on one shard.
TUNING = StoreTuning(fleet_size=8, shards=4, rollup_seconds=1.0)


async def started(env, settings: Settings = SETTINGS, tuning: StoreTuning = TUNING):
    store = DynamoStateStore(settings, env.table, env.endpoint, tuning=tuning)
    await store.start()
    return store


def control_item(env, backend: str) -> dict:
    return (
        make_client(env.endpoint)
        .get_item(
            TableName=env.table,
            Key={"pk": {"S": "backend"}, "sk": {"S": backend}},
            ConsistentRead=True,
        )
        .get("Item", {})
    )


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
    await stores[0].rollup()
    for store in stores:
        await store.close()
    totals = shared_totals(dynamodb_env.endpoint, dynamodb_env.table, "p:m")
    assert totals["requests"] == 1200
    # Each instance raised confidence to the cap on its own (+0.2 each): the rollup pulled the
    # stored sum of changes back to +0.2 instead of leaving +0.6 that failures would eat into.
    assert totals["conf"] == pytest.approx(1.0 - 0.8)


async def test_an_open_circuit_reaches_another_instance_within_a_second(dynamodb_env) -> None:
    a, b = await started(dynamodb_env), await started(dynamodb_env)
    try:
        now = time.time()
        for _ in range(3):
            a.record_failure("p:m", ErrorClass.SERVER, now)
        assert a.state("p:m").circuit(now, SETTINGS) is CircuitState.OPEN
        seen = await eventually(
            lambda: b.state("p:m").circuit(time.time(), SETTINGS) is CircuitState.OPEN, 3
        )
        assert seen < 1.5
        # The statistics follow with the next rollup (rollup_seconds + about a refresh).
        await eventually(lambda: b.state("p:m").consecutive_failures == 3, 1.0 + 3)
        assert b.state("p:m").confidence == pytest.approx(a.state("p:m").confidence)
        assert b.state("p:m").failures == 3
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


async def test_a_refused_user_is_refused_again_without_a_write(dynamodb_env) -> None:
    store = await started(dynamodb_env)
    writes: list[str] = []
    store._client.meta.events.register(
        "before-send.dynamodb.UpdateItem", lambda **kwargs: writes.append("update")
    )
    try:
        now = time.time()
        windows = [(3600, 2)]
        assert await store.count_request("erin", windows, now) is None
        assert await store.count_request("erin", windows, now) is None
        wait = await store.count_request("erin", windows, now)
        assert wait is not None and wait > 0
        written = len(writes)
        again = await store.count_request("erin", windows, now + 1)
        assert again == pytest.approx(wait - 1)
        assert len(writes) == written  # decided from the refusal DynamoDB already gave
    finally:
        await store.close()


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
        assert shared_totals(env.endpoint, env.table, "p:m")["requests"] == 12
    finally:
        await store.close()


async def test_unreachable_at_start_up_still_serves(dynamodb_env) -> None:
    store = DynamoStateStore(SETTINGS, dynamodb_env.table, "http://127.0.0.1:9", tuning=TUNING)
    await store.start()
    try:
        assert store.status().healthy is False
        store.record_failure("p:m", ErrorClass.TIMEOUT, time.time())
        assert store.state("p:m").failures == 1
        assert await store.count_request("dave", [(60, 1)], time.time()) is None
        # Deltas pending through the outage never hold the event loop (requests keep flowing).
        ticks, began = 0, time.monotonic()
        while time.monotonic() - began < 2.5:
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks > 100
        assert store.backlog == 1
    finally:
        await store.close()


async def test_reads_follow_traffic_not_the_clock(dynamodb_env) -> None:
    store = await started(dynamodb_env)
    reads: list[float] = []

    def count(params, **_) -> None:
        if params.get("ExpressionAttributeValues", {}).get(":pk", {}).get("S") == "backend":
            reads.append(time.monotonic())

    store._client.meta.events.register("before-parameter-build.dynamodb.Query", count)
    try:
        await asyncio.sleep(2.5)  # nothing served: idle after the first refresh
        idle = len(reads)
        began = time.monotonic()
        while time.monotonic() - began < 3:  # looked at (a dashboard): once a second at most
            store.state("p:m")
            await asyncio.sleep(0.05)
        looked = len(reads) - idle
        began = time.monotonic()
        while time.monotonic() - began < 3:  # serving: the active refresh, about 1 s
            store.record_success("p:m", 5.0, time.time())
            await asyncio.sleep(0.05)
        served = len(reads) - idle - looked
        assert idle <= 2
        assert 2 <= looked <= 4
        assert 2 <= served <= 5
    finally:
        await store.close()


async def test_an_idle_instance_flushes_its_first_request_at_once(dynamodb_env) -> None:
    store = await started(dynamodb_env)
    try:
        await asyncio.sleep(2.5)  # idle: the loop now waits up to 15 s
        store.state("p:m")  # a look refreshes the view...
        await asyncio.sleep(0.3)
        store.record_success("p:m", 5.0, time.time())  # ...and a request right after it
        await eventually(
            lambda: (
                shared_totals(dynamodb_env.endpoint, dynamodb_env.table, "p:m").get("requests") == 1
            ),
            2.5,
        )
    finally:
        await store.close()
