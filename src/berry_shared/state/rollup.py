"""The rollup: every backend's statistics summed over all shards, in one small item.

Reading N shards costs N queries; doing that in every container every second would make the
read cost grow with fleet size times shard count. Instead one container at a time (holding a
short lease) sums the shards every few seconds and writes the result into one item of the
control partition, which every container reads anyway for the circuit states. So a container
reads one small partition per refresh, and the shard reads cost the same for 10 containers or
1,000.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config import Settings
from .counters import AttributeValue, ShardReader, decode, decode_item, encode, key, number
from .layout import CONTROL_PK, LIMITS_PK, STATS_PK, item_ttl, limit_is_current
from .shards import (
    BackendTotals,
    Value,
    clamp_confidence_sum,
    flush_rate,
    merge_backend_shards,
    rollup_due,
    rollup_spread,
    shard_pk,
)

logger = logging.getLogger("berry.state")

ROLLUP_SK = "~rollup"  # backend keys are provider:model, so never this
# About this many instances try to take the lease per round, whatever the fleet size; past
# the cap (a fleet above ~60 active containers) more do, about active / cap per round.
ROLLUP_CONTENDERS = 4.0
ROLLUP_SPREAD_CAP_SECONDS = 15.0
# Longer than summing the shards takes; a holder frozen longer loses it (and its write).
ROLLUP_LEASE_SECONDS = 10.0

# Short names inside the map: the rollup is read by every container every second, and the
# read is billed by size.
_FIELDS = {
    "c": "conf",
    "r": "requests",
    "f": "failures",
    "k": "consecutive",
    "s": "last_success_at",
    "e": "last_failure_at",
    "l": "latency_ms",
    "t": "latency_at",
    "x": "last_error",
    "o": "cooldown_until",
    "b": "batches",
}


@dataclass(slots=True)
class Rollup:
    exists: bool = False
    # When the summing started: every batch acknowledged before it is included.
    at: float = 0.0
    # Shards summed (the most any container was configured with).
    shards: int = 0
    # The largest batch count of any backend, and the batches per second since the previous
    # rollup: about how many containers are active.
    batches: int = 0
    rate: float = 0.0
    lease_until: float = 0.0
    backends: dict[str, BackendTotals] = field(default_factory=dict)
    # Per-user spend and token windows that limits are enforced on, summed over the shards.
    limits: dict[str, float] = field(default_factory=dict)


def _totals(encoded: Mapping[str, AttributeValue]) -> BackendTotals:
    totals = BackendTotals()
    for short, name in _FIELDS.items():
        if short in encoded:
            value = decode(encoded[short])
            if name == "last_error":
                totals.last_error = value if isinstance(value, str) else None
            elif isinstance(value, (int, float)):
                default = getattr(totals, name)
                setattr(totals, name, int(value) if isinstance(default, int) else float(value))
    return totals


def decode_rollup(item: Mapping[str, AttributeValue] | None) -> Rollup:
    if not item:
        return Rollup()

    def num(name: str) -> float:
        value = decode(item[name]) if name in item else None
        return float(value) if isinstance(value, (int, float)) else 0.0

    backends = {
        backend: _totals(value.get("M", {}))
        for backend, value in item.get("v", {}).get("M", {}).items()
    }
    limits = {
        sk: float(value) if isinstance(value, (int, float)) else 0.0
        for sk, encoded in item.get("u", {}).get("M", {}).items()
        if (value := decode(encoded)) is not None
    }
    return Rollup(
        exists="at" in item,
        at=num("at"),
        shards=int(num("n")),
        batches=int(num("b")),
        rate=num("rate"),
        lease_until=num("lease"),
        backends=backends,
        limits=limits,
    )


def encode_backends(backends: Mapping[str, BackendTotals]) -> AttributeValue:
    encoded: dict[str, AttributeValue] = {}
    for backend, totals in backends.items():
        fields: dict[str, AttributeValue] = {}
        for short, name in _FIELDS.items():
            value: Value | None = getattr(totals, name)
            if value is None or (name != "conf" and value == 0):
                continue  # absent means zero: smaller item, cheaper reads
            fields[short] = encode(value)
        encoded[backend] = {"M": fields}
    return {"M": encoded}


def rollup_values(
    at: float,
    shards: int,
    batches: int,
    rate: float,
    backends: Mapping[str, BackendTotals],
    limits: Mapping[str, float] | None = None,
) -> dict[str, AttributeValue]:
    return {
        ":at": number(at),
        ":n": number(shards),
        ":b": number(batches),
        ":rate": number(rate),
        ":v": encode_backends(backends),
        ":u": {"M": {sk: number(total) for sk, total in (limits or {}).items()}},
    }


def sum_limits(items: list[tuple[int, dict[str, AttributeValue]]], now: float) -> dict[str, float]:
    """Per-user spend and token windows still in force, summed over the shards."""
    month = time.strftime("%Y-%m", time.gmtime(now))
    totals: dict[str, float] = {}
    for _, item in items:
        sk = item["sk"]["S"]
        value = decode(item.get("v", {}))
        if isinstance(value, (int, float)) and limit_is_current(sk, month, now):
            totals[sk] = totals.get(sk, 0) + value
    return totals


class RollupKeeper:
    """Recomputes the rollup when it falls due, one instance at a time (a conditional lease).

    Runs in executor threads (blocking boto3 calls); the client is passed in.
    """

    def __init__(
        self,
        table: str,
        settings: Settings,
        shards: int,
        period: float,
        refresh_seconds: float,
        instance_id: str,
        reader: ShardReader,
    ) -> None:
        self.table = table
        self.settings = settings
        self.shards = shards
        self.period = period
        self.refresh_seconds = refresh_seconds
        self.instance_id = instance_id
        self.reader = reader
        self._rng = random.Random()
        self._draw = (-1.0, 0.0)  # (rollup.at it was drawn for, uniform 0..1)
        self._announced = 0

    def maybe_recompute(self, client: Any, current: Rollup) -> Rollup:
        """The rollup to adopt: ``current``, or a new one if it was due and this instance
        won the lease. A failure leaves the old one in place: the rollup only saves reads."""
        if self.shards > max(current.shards, self._announced):
            self._announce(client)
        now = time.time()
        if current.lease_until > now:
            return current  # another instance is on it
        if self._draw[0] != current.at:
            self._draw = (current.at, self._rng.random())
        spread = rollup_spread(
            current.rate, self.refresh_seconds, ROLLUP_CONTENDERS, ROLLUP_SPREAD_CAP_SECONDS
        )
        if not rollup_due(now - current.at, self.period, spread, self._draw[1], current.exists):
            return current
        try:
            return self.recompute(client, current, leased=True)
        except Exception as exc:
            logger.info("rollup not recomputed: %s", type(exc).__name__)
            return current

    def recompute(self, client: Any, previous: Rollup, leased: bool) -> Rollup:
        """Sum every backend's shards into the rollup item (holding its lease if ``leased``)."""
        now = time.time()
        if leased and not self._update(
            client,
            "SET lease = :until, lease_by = :me",
            "(attribute_not_exists(lease) OR lease < :now) AND "
            "(attribute_not_exists(#at) OR #at = :seen)",
            {
                ":until": number(now + ROLLUP_LEASE_SECONDS),
                ":me": {"S": self.instance_id},
                ":now": number(now),
                ":seen": number(previous.at),
            },
        ):
            return previous  # someone else took it, or just recomputed it
        started = time.time()
        shards = max(self.shards, previous.shards)
        by_backend: dict[str, list[dict[str, Value]]] = {}
        first_shard: dict[str, dict[str, AttributeValue]] = {}
        for shard, item in self.reader.read(client, STATS_PK, shards):
            backend = item["sk"]["S"]
            by_backend.setdefault(backend, []).append(decode_item(item))
            if shard == 0:
                first_shard[backend] = item
        smart = self.settings.smart_ai
        backends: dict[str, BackendTotals] = {}
        for backend, items in by_backend.items():
            totals = merge_backend_shards(items)
            clamped = clamp_confidence_sum(
                totals.conf, smart.initial_confidence, smart.min_confidence
            )
            if clamped != totals.conf:
                seen = first_shard.get(backend, {}).get("conf")
                self._correct_confidence(client, backend, seen, clamped - totals.conf)
                totals.conf = clamped
            backends[backend] = totals
        batches = max((totals.batches for totals in backends.values()), default=0)
        rate = flush_rate(batches, started, previous.batches, previous.at, self.period)
        limits = sum_limits(self.reader.read(client, LIMITS_PK, shards), started)
        self._update(
            client,
            "SET #at = :at, n = :n, b = :b, rate = :rate, v = :v, u = :u, lease = :zero",
            "lease_by = :me" if leased else "attribute_not_exists(#at) OR #at < :at",
            {
                **rollup_values(started, shards, batches, rate, backends, limits),
                ":zero": number(0),
                **({":me": {"S": self.instance_id}} if leased else {}),
            },
        )
        # Adopted even if the write lost a race: it is a true sum as of ``started``.
        return Rollup(True, started, shards, batches, rate, 0.0, backends, limits)

    def _update(self, client: Any, update: str, condition: str, values: dict[str, Any]) -> bool:
        names = {"#ttl": "ttl"}
        if "#at" in update or "#at" in condition:
            names["#at"] = "at"
        try:
            client.update_item(
                TableName=self.table,
                Key=key(CONTROL_PK, ROLLUP_SK),
                UpdateExpression=f"{update}, #ttl = :ttl",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={**values, ":ttl": item_ttl()},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _correct_confidence(
        self, client: Any, backend: str, seen: AttributeValue | None, correction: float
    ) -> None:
        """ADD cannot clamp: pull the shared sum back in range by correcting shard 0.

        Conditional on shard 0's ``conf`` being ``seen`` (as read), so that a correction is
        never applied twice: only the lease holder corrects, and a lease taken over from a
        frozen holder sees the corrected value, so the old holder's condition fails.
        """
        values: dict[str, Any] = {":ttl": item_ttl()}
        if seen is not None and "N" in seen:
            # Exact decimals both ways: a float round trip would miss the stored value.
            condition = "conf = :seen"
            values[":seen"] = seen
            values[":conf"] = {"N": str(Decimal(seen["N"]) + Decimal(repr(correction)))}
        else:
            condition = "attribute_not_exists(conf)"
            values[":conf"] = number(correction)
        try:
            client.update_item(
                TableName=self.table,
                Key=key(shard_pk(STATS_PK, 0), backend),
                UpdateExpression="SET conf = :conf, #ttl = :ttl",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues=values,
            )
        except Exception as exc:  # lost a race (a new delta, a conflict): the next one corrects
            logger.debug("confidence correction skipped: %s", type(exc).__name__)

    def _announce(self, client: Any) -> None:
        """This instance writes to more shards than the rollup sums: say so, once."""
        try:
            self._update(
                client,
                "SET n = :n",
                "attribute_not_exists(n) OR n < :n",
                {":n": number(self.shards)},
            )
        except Exception as exc:
            logger.debug("shard count not announced: %s", type(exc).__name__)
            return
        self._announced = self.shards
