"""The sharded counters' arithmetic and batch building, one rule at a time (no I/O)."""

from __future__ import annotations

import random

import pytest

from berry_shared.backend_state import ErrorClass
from berry_shared.state.counters import (
    MAX_UPDATES_PER_TRANSACTION,
    CounterUpdate,
    PendingCounters,
    build_transactions,
    decode,
    receipt_found,
)
from berry_shared.state.dynamo import BackendDelta, StoreTuning
from berry_shared.state.rollup import Rollup, decode_rollup, encode_backends
from berry_shared.state.shards import (
    MAX_SHARDS,
    BackendTotals,
    backoff_delay,
    clamp_confidence_sum,
    flush_rate,
    merge_backend_shards,
    rollup_due,
    rollup_spread,
    shard_pk,
    shards_for_fleet,
    sum_counters,
)


@pytest.mark.parametrize(
    ("containers", "shards"),
    [(0, 1), (1, 1), (2, 1), (3, 2), (10, 5), (100, 50), (1000, 500), (10**6, MAX_SHARDS)],
)
def test_shards_follow_the_fleet_size(containers: int, shards: int) -> None:
    assert shards_for_fleet(containers) == shards


def test_the_shard_is_part_of_the_partition_key() -> None:
    assert shard_pk("stats", 7) == "stats#7"
    assert shard_pk("usage#alice", 0) == "usage#alice#0"


def test_sum_counters_adds_numbers_and_ignores_keys_ttl_and_text() -> None:
    items = [
        {"pk": "usage#a#0", "sk": "d", "requests": 2, "cost_usd": 0.25, "ttl": 99, "note": "x"},
        {"pk": "usage#a#3", "sk": "d", "requests": 5, "cost_usd": 0.5, "ttl": 99},
    ]
    assert sum_counters(items) == {"requests": 7, "cost_usd": 0.75}


def shard(**values: float | str) -> dict[str, float | str]:
    return dict(values)


def test_merge_sums_counts_and_takes_the_latest_times() -> None:
    totals = merge_backend_shards(
        [
            shard(requests=10, failures=2, conf=0.05, last_success_at=100, last_failure_at=50),
            shard(requests=3, failures=3, conf=-0.2, last_success_at=90, last_failure_at=120),
            shard(requests=1, cooldown_until=300),
        ]
    )
    assert (totals.requests, totals.failures) == (14, 5)
    assert totals.conf == pytest.approx(-0.15)
    assert totals.last_success_at == 100
    assert totals.last_failure_at == 120
    assert totals.cooldown_until == 300


def test_merge_takes_the_latency_written_last_and_the_error_of_the_latest_failure() -> None:
    totals = merge_backend_shards(
        [
            shard(latency_ms=900, latency_at=10, last_failure_at=5, last_error="timeout"),
            shard(latency_ms=300, latency_at=20, last_failure_at=7, last_error="server"),
            shard(requests=1),
        ]
    )
    assert totals.latency_ms == 300
    assert totals.last_error == "server"
    assert merge_backend_shards([shard(requests=1)]).latency_ms is None


def test_consecutive_failures_with_no_success_anywhere_add_up() -> None:
    totals = merge_backend_shards(
        [shard(consec=2, last_failure_at=10), shard(consec=3, last_failure_at=11)]
    )
    assert totals.consecutive == 5


def test_failures_before_the_fleets_latest_success_do_not_count() -> None:
    totals = merge_backend_shards(
        [
            # Failed long ago, then nothing: another shard has a later success.
            shard(consec=4, last_failure_at=10, last_success_at=5),
            # The latest success, then two failures after it.
            shard(consec=2, last_success_at=20, last_failure_at=25),
            # Failures after that success, in a shard whose own success is older.
            shard(consec=1, last_success_at=1, last_failure_at=30),
        ]
    )
    assert totals.last_success_at == 20
    assert totals.consecutive == 3


def test_a_success_after_every_failure_means_no_consecutive_failures() -> None:
    totals = merge_backend_shards(
        [
            shard(consec=0, last_success_at=50, last_failure_at=40),
            shard(consec=3, last_failure_at=45),
        ]
    )
    assert totals.consecutive == 0


def test_confidence_sums_are_clamped_to_what_confidence_may_be() -> None:
    assert clamp_confidence_sum(0.6, initial=0.8, lowest=0.1) == pytest.approx(0.2)
    assert clamp_confidence_sum(-5.0, initial=0.8, lowest=0.1) == pytest.approx(-0.7)
    assert clamp_confidence_sum(0.1, initial=0.8, lowest=0.1) == 0.1


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    rng = random.Random(7)
    for attempt in range(8):
        cap = min(1.0, 0.05 * 2**attempt)
        delays = [backoff_delay(attempt, 0.05, 1.0, rng) for _ in range(400)]
        assert all(0 <= delay <= cap for delay in delays)
        # Spread over the whole range, so that throttled containers do not retry together.
        assert min(delays) < cap * 0.1 and max(delays) > cap * 0.9


def test_rollup_competition_spreads_with_the_active_fleet_and_is_capped() -> None:
    assert rollup_spread(0.0, 1.0, 4, 15) == 0.0
    assert rollup_spread(40.0, 1.0, 4, 15) == 10.0
    assert rollup_spread(4000.0, 1.0, 4, 15) == 15.0
    assert rollup_due(3.0, period=3.0, spread=10.0, draw=0.0)
    assert not rollup_due(7.9, period=3.0, spread=10.0, draw=0.5)
    assert rollup_due(8.0, period=3.0, spread=10.0, draw=0.5)
    assert rollup_due(0.0, period=3.0, spread=10.0, draw=1.0, has_rollup=False)


def test_rollup_attempts_per_round_stay_near_the_contenders_until_the_cap() -> None:
    """Simulated rounds: each active container draws its start; count those that try before
    the first one's lease is visible to them (one refresh later)."""
    rng = random.Random(3)
    for active in (2, 20, 60, 600):
        spread = rollup_spread(active, 1.0, 4, 15)
        tries = []
        for _ in range(200):
            starts = sorted(3.0 + rng.random() * spread for _ in range(active))
            tries.append(sum(1 for start in starts if start < starts[0] + 1.0))
        mean = sum(tries) / len(tries)
        # About 1 + 4 while the spread follows the fleet; past the cap, active / 15 per round.
        assert mean <= 1.5 * max(1 + 4, active / 15), (active, mean)


def test_flush_rate_needs_a_recent_previous_rollup() -> None:
    assert flush_rate(130, 13.0, 100, 10.0, period=3.0) == pytest.approx(10.0)
    assert flush_rate(130, 13.0, 0, 0.0, period=3.0) == 0.0
    assert flush_rate(130, 100.0, 100, 10.0, period=3.0) == 0.0  # too old to say
    assert flush_rate(90, 13.0, 100, 10.0, period=3.0) == 0.0  # items expired meanwhile


def test_a_put_after_an_add_replaces_it_and_an_add_after_a_put_adds_to_it() -> None:
    update = CounterUpdate()
    update.merge_add({"consec": 2, "requests": 1})
    update.merge_put({"consec": 0})  # a success: reset
    update.merge_add({"consec": 1, "requests": 1})  # then a failure
    assert update.put == {"consec": 1}
    assert update.add == {"requests": 2}
    expression, names, values = update.expression()
    assert expression.startswith("SET #ttl = :ttl, #p0 = :p0 ADD #a0 :a0")
    assert names["#p0"] == "consec" and names["#a0"] == "requests"
    assert values[":a0"] == {"N": "2"}


def test_pending_counters_merge_per_item_and_are_taken_once() -> None:
    pending = PendingCounters()
    pending.add("usage#a", "d#m", {"requests": 1, "cost_usd": 0.5}, ttl=10, shards=4)
    pending.add("usage#a", "d#m", {"requests": 1, "cost_usd": 0.25}, ttl=20, shards=4)
    pending.add("usage#b", "d#m", {"requests": 1}, ttl=10, shards=4)
    assert len(pending) == 2
    updates = pending.take()
    assert updates[("usage#a", "d#m")].add == {"requests": 2, "cost_usd": 0.75}
    assert updates[("usage#a", "d#m")].ttl == 20
    assert len(pending) == 0


def test_a_flush_becomes_transactions_of_at_most_100_items_each_with_its_receipt() -> None:
    updates = {
        ("stats", f"p:m{i}"): CounterUpdate(add={"requests": 1}, ttl=1, shards=8)
        for i in range(150)
    }
    transactions = build_transactions("t", updates, shard=13, now=1000.0)
    assert [len(t.items) for t in transactions] == [MAX_UPDATES_PER_TRANSACTION + 1, 52]
    assert len({t.token for t in transactions}) == 2
    for transaction in transactions:
        *counters, receipt = transaction.items
        assert {item["Update"]["Key"]["pk"]["S"] for item in counters} == {"stats#5"}  # 13 % 8
        assert receipt["Put"]["Item"]["pk"]["S"] == f"receipt#{transaction.token}"
        assert receipt["Put"]["ConditionExpression"] == "attribute_not_exists(pk)"
    assert sum(len(t.counted) for t in transactions) == 150


def test_each_item_takes_the_batch_shard_modulo_its_own_shard_count() -> None:
    updates = {
        ("stats", "p:m"): CounterUpdate(add={"requests": 1}, ttl=1, shards=50),
        ("usage#a", "d"): CounterUpdate(add={"requests": 1}, ttl=1, shards=4),
    }
    (transaction,) = build_transactions("t", updates, shard=57, now=0)
    keys = {item["Update"]["Key"]["pk"]["S"] for item in transaction.items[:-1]}
    assert keys == {"stats#7", "usage#a#1"}


def test_only_a_failed_receipt_condition_means_applied_before() -> None:
    assert receipt_found([{"Code": "None"}, {"Code": "ConditionalCheckFailed"}])
    assert not receipt_found([{"Code": "TransactionConflict"}, {"Code": "None"}])
    assert not receipt_found([])


def test_numbers_decode_exactly() -> None:
    assert decode({"N": "3"}) == 3 and isinstance(decode({"N": "3"}), int)
    assert decode({"N": "0.000075"}) == 0.000075
    assert decode({"S": "x"}) == "x"
    assert decode({"BOOL": True}) is None


def test_a_backend_delta_becomes_adds_and_sets() -> None:
    failing = BackendDelta(
        confidence=-0.2,
        requests=2,
        failures=2,
        consecutive=2,
        last_failure_at=5.0,
        last_error=ErrorClass.TIMEOUT,
    )
    add, put = failing.counters()
    assert add == {"batches": 1, "conf": -0.2, "requests": 2, "failures": 2, "consec": 2}
    assert put == {"last_failure_at": 5.0, "last_error": "timeout"}
    recovered = BackendDelta(
        requests=1, reset_consecutive=True, latency_ms=120.0, latency_at=9.0, last_success_at=9.0
    )
    add, put = recovered.counters()
    assert add == {"batches": 1, "requests": 1}
    assert put == {"consec": 0, "last_success_at": 9.0, "latency_ms": 120.0, "latency_at": 9.0}


def test_the_rollup_round_trips_and_omits_zeros() -> None:
    totals = BackendTotals(
        conf=-0.1, requests=7, failures=2, consecutive=1, last_failure_at=5.5, last_error="server"
    )
    encoded = encode_backends({"p:m": totals, "q:m": BackendTotals()})
    assert set(encoded["M"]["q:m"]["M"]) == {"c"}  # confidence only: absent means zero
    item = {
        "at": {"N": "12.5"},
        "n": {"N": "50"},
        "b": {"N": "9"},
        "rate": {"N": "2.5"},
        "v": encoded,
    }
    rollup = decode_rollup(item)
    assert (rollup.exists, rollup.at, rollup.shards, rollup.batches) == (True, 12.5, 50, 9)
    assert rollup.backends["p:m"] == totals
    assert rollup.backends["q:m"] == BackendTotals()
    assert decode_rollup(None) == Rollup()


def test_tuning_comes_from_the_environment() -> None:
    assert StoreTuning.from_env({}) == StoreTuning(100, 50, 3.0)
    assert StoreTuning.from_env({"BERRY_STATE_FLEET_SIZE": "1000"}).shards == 500
    tuned = StoreTuning.from_env({"BERRY_STATE_SHARDS": "8", "BERRY_STATE_ROLLUP_SECONDS": "10"})
    assert (tuned.shards, tuned.rollup_seconds) == (8, 10.0)
    with pytest.raises(ValueError, match="BERRY_STATE"):
        StoreTuning.from_env({"BERRY_STATE_SHARDS": "0"})
