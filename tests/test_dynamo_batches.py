"""Sharded batches against the real DynamoDB Local: exactly once under conflicts, throttling
and lost answers; generic counters; the shared health times; the rollup's single writer."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from berry_shared.backend_state import ErrorClass
from berry_shared.config import Settings
from berry_shared.state.counters import Transaction
from berry_shared.state.dynamo import DynamoStateStore, StoreTuning, make_client
from dynamodb import eventually, shared_requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from scale_sim import error_body, fabricated

SETTINGS = Settings(circuit_breaker_failure_threshold=3, circuit_breaker_timeout_seconds=60)
TUNING = StoreTuning(fleet_size=8, shards=4, rollup_seconds=1.0)


async def started(env, tuning: StoreTuning = TUNING) -> DynamoStateStore:
    store = DynamoStateStore(SETTINGS, env.table, env.endpoint, tuning=tuning)
    await store.start()
    return store


class ScriptedFaults:
    """A botocore ``before-send`` hook that answers the next batch attempts as scripted:
    "conflict", "throttle" (no write happened), "lost" (written, answer lost), None (real)."""

    def __init__(self, store: DynamoStateStore, script: list[str | None]) -> None:
        self.script = list(script)
        self.sent: list[str | None] = []
        store._client.meta.events.register("before-send.dynamodb.TransactWriteItems", self.answer)

    def answer(self, request: Any, **_: Any) -> Any:
        body = json.loads(request.body)
        if "ClientRequestToken" not in body or not self.script:
            return None  # not a counter batch, or nothing left to inject
        fault = self.script.pop(0)
        self.sent.append(fault)
        if fault == "conflict":
            reasons = [{"Code": "TransactionConflict"}] + [{"Code": "None"}] * (
                len(body["TransactItems"]) - 1
            )
            return fabricated(
                request.url,
                400,
                error_body("TransactionCanceledException", CancellationReasons=reasons),
            )
        if fault == "throttle":
            return fabricated(request.url, 400, error_body("ThrottlingException"))
        if fault == "lost":
            from botocore.httpsession import URLLib3Session

            assert URLLib3Session().send(request).status_code == 200  # really applied
            return fabricated(request.url, 500, error_body("InternalServerError"))
        return None


def one_flush(store: DynamoStateStore) -> Transaction:
    """Take what is pending as it would be flushed, without sending it."""
    store._take_batch(time.time())
    (flush,) = store._unsent
    store._unsent.clear()
    return flush.transaction


async def test_a_resend_with_the_same_token_counts_once(dynamodb_env) -> None:
    store = await started(dynamodb_env)
    try:
        store.record_success("p:m", 5.0, time.time())
        store.record_success("p:m", 5.0, time.time())
        transaction = one_flush(store)
        store._transact(transaction)
        store._transact(transaction)  # the answer was lost: sync() resends the same request
        assert shared_requests(dynamodb_env.endpoint, dynamodb_env.table, "p:m") == 2
    finally:
        await store.close()


async def test_a_resend_after_the_token_expired_is_caught_by_the_receipt(dynamodb_env) -> None:
    store = await started(dynamodb_env)
    try:
        store.record_success("p:m", 5.0, time.time())
        transaction = one_flush(store)
        store._transact(transaction)
        # More than 10 minutes later DynamoDB treats the token as new: the receipt's condition
        # then cancels the transaction, and the store knows the batch was applied before.
        late = Transaction("another-token", transaction.created, transaction.items, [])
        store._transact(late)
        assert shared_requests(dynamodb_env.endpoint, dynamodb_env.table, "p:m") == 1
        store.record_success("p:m", 5.0, time.time())
        store._transact(one_flush(store))  # a genuinely new batch counts
        assert shared_requests(dynamodb_env.endpoint, dynamodb_env.table, "p:m") == 2
    finally:
        await store.close()


@pytest.mark.parametrize(
    "script",
    [
        ["conflict", "conflict"],
        ["throttle", "conflict", "throttle"],
        ["lost", "lost", "lost"],
        ["lost", "conflict", "lost"],
    ],
)
async def test_retried_batches_count_exactly_once(dynamodb_env, script) -> None:
    store = await started(dynamodb_env)
    try:
        faults = ScriptedFaults(store, script)
        for _ in range(3):
            store.record_failure("p:m", ErrorClass.SERVER, time.time())
        await store.sync(read=False)
        assert faults.sent == script  # every scripted fault was met
        assert store.status().healthy
        assert store.backlog == 0
        assert shared_requests(dynamodb_env.endpoint, dynamodb_env.table, "p:m") == 3
        assert store.retries.conflicts == script.count("conflict")
    finally:
        await store.close()


async def test_throttled_past_the_retries_the_batch_waits_and_counts_once(dynamodb_env) -> None:
    store = await started(dynamodb_env)
    try:
        faults = ScriptedFaults(store, ["lost"] + ["throttle"] * 20)
        store.record_success("p:m", 5.0, time.time())
        await store.sync(read=False)  # applied (lost answer), then throttled: gives up
        assert store.backlog == 1
        assert not store.status().healthy
        assert shared_requests(dynamodb_env.endpoint, dynamodb_env.table, "p:m") == 1
        faults.script.clear()
        store.record_success("p:m", 5.0, time.time())
        assert await store.drain(10)
        assert store.status().healthy
        assert shared_requests(dynamodb_env.endpoint, dynamodb_env.table, "p:m") == 2
    finally:
        await store.close()


async def test_counters_added_by_any_feature_are_summed_over_shards(dynamodb_env) -> None:
    a, b = await started(dynamodb_env), await started(dynamodb_env)
    try:
        for store in (a, b):
            for _ in range(5):
                store.add_counters(
                    "usage#alice", "2025-01-02#m", {"requests": 1, "cost_usd": 0.000125}
                )
                await store.sync(read=False)  # a batch each: they land on random shards
        a.add_counters("usage#alice", "2025-01-03#m", {"requests": 1, "tokens": 42})
        await a.sync(read=False)
        usage = await b.read_counters("usage#alice", "2025-01-02")
        assert usage == {"2025-01-02#m": {"requests": 10, "cost_usd": pytest.approx(0.00125)}}
        everything = await b.read_counters("usage#alice")
        assert everything["2025-01-03#m"] == {"requests": 1, "tokens": 42}
        raw = make_client(dynamodb_env.endpoint).scan(TableName=dynamodb_env.table)["Items"]
        shards = {i["pk"]["S"] for i in raw if i["pk"]["S"].startswith("usage#alice#")}
        assert len(shards) > 1  # really spread over shards, not one hot item
    finally:
        await a.close()
        await b.close()


async def test_a_backend_that_fails_everything_is_unhealthy_on_both_instances(
    dynamodb_env,
) -> None:
    # The defaults (shards for 100 containers, rollup every 3 s): "a few seconds" must hold.
    a, b = await started(dynamodb_env, StoreTuning()), await started(dynamodb_env, StoreTuning())
    try:
        succeeded_at = time.time()
        b.record_success("p:m", 50.0, succeeded_at)
        await b.sync(read=False)
        stop = asyncio.Event()

        async def fail_everything() -> None:
            while not stop.is_set():
                a.record_failure("p:m", ErrorClass.SERVER, time.time(), retry_after=0.5)
                await asyncio.sleep(0.2)

        failing = asyncio.create_task(fail_everything())

        def unhealthy(store: DynamoStateStore) -> bool:
            state = store.state("p:m")
            return state.last_failure_at > state.last_success_at

        waited = await eventually(lambda: unhealthy(a) and unhealthy(b), 6.0)
        stop.set()
        await failing
        # Max-merged over the instances: each knows the other's latest time.
        await eventually(lambda: a.state("p:m").last_success_at == succeeded_at, 6.0)
        assert b.state("p:m").last_failure_at > succeeded_at
        assert waited < 6.0
        # And back: a later success anywhere makes both healthy again.
        a.record_success("p:m", 50.0, time.time() + 0.01)
        await eventually(lambda: not unhealthy(a) and not unhealthy(b), 6.0)
    finally:
        await a.close()
        await b.close()


async def test_one_instance_at_a_time_reads_the_shards(dynamodb_env) -> None:
    tuning = StoreTuning(fleet_size=16, shards=8, rollup_seconds=1.0)
    stores = [await started(dynamodb_env, tuning) for _ in range(6)]
    shard_reads: list[str] = []
    rollups: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        if (
            params.get("ExpressionAttributeValues", {})
            .get(":pk", {})
            .get("S", "")
            .startswith("stats#")
        ):
            shard_reads.append("query")
        if ":v" in params.get("ExpressionAttributeValues", {}):
            rollups.append("write")

    for store in stores:
        store._client.meta.events.register("before-parameter-build.dynamodb", count)
    try:
        began = time.monotonic()
        while time.monotonic() - began < 5.0:
            for index, store in enumerate(stores):
                store.record_success(f"p:m{index}", 5.0, time.time())  # all active
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - began
        # About one rollup per period for the whole fleet, not one per instance and period.
        assert 1 <= len(rollups) <= elapsed / tuning.rollup_seconds + 2
        # Each rollup reads every statistics shard once (one may still be on its way).
        assert len(rollups) * tuning.shards <= len(shard_reads)
        assert len(shard_reads) <= (len(rollups) + 1) * tuning.shards
        # Every instance sees every backend's totals through the rollup.
        await eventually(lambda: all(s.state("p:m5").requests > 1 for s in stores), 4.0)
    finally:
        for store in stores:
            await store.close()


async def test_an_overshoot_is_corrected_exactly_once(dynamodb_env) -> None:
    # One shard: the correction must match the exact decimal already stored there.
    tuning = StoreTuning(fleet_size=1, shards=1, rollup_seconds=60)
    a, b = await started(dynamodb_env, tuning), await started(dynamodb_env, tuning)
    try:
        for store in (a, b):  # each raises confidence to the cap on its own: +0.2 each
            for _ in range(30):
                store.record_success("p:m", 5.0, time.time())
            await store.sync(read=False)
        client = make_client(dynamodb_env.endpoint)

        def stored() -> float:
            return float(
                client.get_item(
                    TableName=dynamodb_env.table,
                    Key={"pk": {"S": "stats#0"}, "sk": {"S": "p:m"}},
                    ConsistentRead=True,
                )["Item"]["conf"]["N"]
            )

        assert stored() == pytest.approx(0.4)
        await a.rollup()
        assert stored() == pytest.approx(0.2)
        await b.rollup()  # already in range: no second correction
        assert stored() == pytest.approx(0.2)
        assert b.state("p:m").confidence == pytest.approx(1.0)
    finally:
        await a.close()
        await b.close()
