"""The arithmetic of sharded counters: how many shards, and how shard items add up.

Pure functions on plain values (no I/O, no clock), so the rules can be tested one by one.

Why shards: DynamoDB serves about 1,000 write units per second per partition, a transaction
costs two units per item, and two transactions that touch the same item at the same moment
conflict (one is cancelled with ``TransactionConflict``). One counter item per backend, written
by every container every second, fails on all three counts at a few hundred containers. So
each batch goes to one shard, chosen at random, and a reader adds the shards up: a shard item
is written by about ``containers / shards`` batches per second, whatever the fleet size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The fleet (warm containers) a table is sized for when nothing says otherwise.
DEFAULT_FLEET_SIZE = 100
# Containers per shard: each flushes at most one batch per second, so a shard item sees about
# two transactions per second, which keeps conflicts (transactions overlapping on one item
# for the ~10-20 ms of a commit) to a few percent.
CONTAINERS_PER_SHARD = 2
MAX_SHARDS = 1000

Value = float | str


def shards_for_fleet(containers: int) -> int:
    """The shard count for a fleet of ``containers`` warm containers."""
    return max(1, min(MAX_SHARDS, math.ceil(max(1, containers) / CONTAINERS_PER_SHARD)))


def shard_pk(pk: str, shard: int) -> str:
    """The partition key of one shard of a logical counter partition.

    The shard goes into the partition key, not the sort key, so that shards land on different
    DynamoDB partitions (AWS's write-sharding pattern); a reader queries each shard.
    """
    return f"{pk}#{shard}"


def sum_counters(items: Iterable[Mapping[str, Value]]) -> dict[str, float]:
    """The sum over shard items of every number attribute (the counters' ADDs)."""
    totals: dict[str, float] = {}
    for item in items:
        for name, value in item.items():
            if name not in ("pk", "sk", "ttl") and isinstance(value, (int, float)):
                totals[name] = totals.get(name, 0.0) + value
    return totals


@dataclass(slots=True)
class BackendTotals:
    """One backend's statistics, merged over all shards (and over every instance's batches)."""

    # Sum of confidence changes since initial_confidence (clamped by whoever uses it).
    conf: float = 0.0
    requests: int = 0
    failures: int = 0
    consecutive: int = 0
    last_success_at: float = 0.0
    last_failure_at: float = 0.0
    latency_ms: float | None = None
    latency_at: float = 0.0
    last_error: str | None = None
    cooldown_until: float = 0.0
    # Batches that touched this backend (the fleet's flush rate is estimated from them).
    batches: int = 0


def _number(item: Mapping[str, Value], name: str) -> float:
    value = item.get(name, 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def merge_backend_shards(items: Iterable[Mapping[str, Value]]) -> BackendTotals:
    """Add up one backend's shard items.

    Counts are sums. Times are maxima (the latest success and failure of any instance win).
    Latency is the one written last; the last error is the one of the latest failure.

    Consecutive failures cannot be summed blindly: a success anywhere resets them. Each shard
    keeps the failures it saw since its own latest success, so the fleet's count is the sum
    over the shards whose latest failure is after the fleet's latest success. A shard that
    also holds failures older than that success over-counts them; writes to one shard are a
    second apart, so that error is bounded by the failures of about one flush interval.
    """
    shards = list(items)
    totals = BackendTotals()
    latest_failure = -1.0
    for item in shards:
        totals.conf += _number(item, "conf")
        totals.requests += int(_number(item, "requests"))
        totals.failures += int(_number(item, "failures"))
        totals.batches += int(_number(item, "batches"))
        totals.last_success_at = max(totals.last_success_at, _number(item, "last_success_at"))
        totals.cooldown_until = max(totals.cooldown_until, _number(item, "cooldown_until"))
        failed_at = _number(item, "last_failure_at")
        if failed_at > latest_failure:
            latest_failure = failed_at
            error = item.get("last_error")
            totals.last_error = error if isinstance(error, str) else totals.last_error
        if "latency_ms" in item and _number(item, "latency_at") >= totals.latency_at:
            totals.latency_ms = _number(item, "latency_ms")
            totals.latency_at = _number(item, "latency_at")
    totals.last_failure_at = max(latest_failure, 0.0)
    totals.consecutive = sum(
        int(_number(item, "consec"))
        for item in shards
        if _number(item, "last_failure_at") > totals.last_success_at
    )
    return totals


def clamp_confidence_sum(total: float, initial: float, lowest: float) -> float:
    """Keep a sum of confidence changes within what confidence itself may be (lowest..1)."""
    return min(1.0 - initial, max(lowest - initial, total))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff (AWS's recommendation): uniform in 0..min(cap, base*2^n),
    so that containers throttled together do not retry together."""
    return rng.uniform(0.0, min(cap, base * 2.0**attempt))


def jittered(interval: float, fraction: float, rng: random.Random) -> float:
    """``interval`` plus or minus ``fraction`` of it, so that a fleet started at once spreads."""
    return interval * (1.0 + rng.uniform(-fraction, fraction))


def rollup_spread(
    flush_rate: float, refresh_seconds: float, contenders: float, cap: float
) -> float:
    """How far apart (seconds) containers start to compete for recomputing the rollup.

    About ``flush_rate`` containers are active; each sees the rollup's age once per refresh.
    Drawing each one's start uniformly over this spread means about ``contenders`` of them
    try within one refresh of the first, whatever the fleet size, while the first try still
    comes ``spread / active`` seconds after the rollup falls due.
    """
    return min(cap, max(0.0, flush_rate) * refresh_seconds / contenders)


def rollup_due(
    age: float, period: float, spread: float, draw: float, has_rollup: bool = True
) -> bool:
    """Whether this container should try to recompute a rollup that is ``age`` seconds old.

    ``draw`` is this container's uniform 0..1 draw for the current rollup.
    """
    if not has_rollup:
        return True
    return age >= period + draw * spread


def flush_rate(
    batches_now: int, at_now: float, batches_before: int, at_before: float, period: float
) -> float:
    """Batches per second between two rollups (about the number of active containers).

    Zero when the previous rollup is missing or too old to say anything about the present.
    """
    elapsed = at_now - at_before
    if at_before <= 0 or elapsed <= 0 or elapsed > 10 * period or batches_now < batches_before:
        return 0.0
    return (batches_now - batches_before) / elapsed
