"""Sharded counter batches: the one write path for everything that is counted.

A feature adds ``(pk, sk, {attribute: delta})`` to the pending batch of its instance (backend
statistics today; per-user usage and token windows next). Once a second the instance sends
what it collected as atomic ``ADD`` updates in one ``TransactWriteItems``, all to one shard
chosen at random for that batch; readers add the shards up.

Exactly once, whatever happens on the wire: every transaction carries an idempotency token
(``ClientRequestToken``: a resend within 10 minutes of the first completed attempt is a
no-op) and also puts a receipt item named after that token, on the condition that it does not
exist. The token makes the usual resend cheap; the receipt covers what the token cannot: a
batch whose answer was lost and that could only be resent more than 10 minutes later (a long
outage), when DynamoDB would treat the token as new. Then the receipt's condition fails and
cancels the transaction, which is how the sender learns that the batch was applied before.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .shards import Value, shard_pk

# TransactWriteItems takes at most 100 actions; one of them is the receipt.
MAX_UPDATES_PER_TRANSACTION = 99
# Receipts outlive any batch an instance could still hold (an instance retries every few
# seconds; a Lambda container lives hours at most).
RECEIPT_TTL_SECONDS = 2 * 86400
RECEIPT_PREFIX = "receipt#"

AttributeValue = dict[str, Any]


def number(value: float | int) -> AttributeValue:
    """A DynamoDB number. Numbers are exact decimals there, so money can be ADDed exactly."""
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def encode(value: Value) -> AttributeValue:
    return {"S": value} if isinstance(value, str) else number(value)


def decode(value: AttributeValue) -> Value | None:
    """A plain value from a DynamoDB attribute value (numbers and strings; None otherwise)."""
    if "N" in value:
        parsed = Decimal(value["N"])
        return int(parsed) if parsed == parsed.to_integral_value() else float(parsed)
    if "S" in value:
        text: str = value["S"]
        return text
    return None


def decode_item(item: Mapping[str, AttributeValue]) -> dict[str, Value]:
    decoded = {name: decode(value) for name, value in item.items()}
    return {name: value for name, value in decoded.items() if value is not None}


def key(pk: str, sk: str) -> dict[str, AttributeValue]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


@dataclass(slots=True)
class CounterUpdate:
    """What one instance adds to one logical counter item before its next flush.

    ``add`` attributes are summed (over batches, and over shards at read). ``put`` attributes
    are set (last write wins within a shard; the reader of that kind of item decides how to
    merge shards, for example the maximum of a time). A ``put`` after an ``add`` of the same
    attribute replaces it (a reset); an ``add`` after a ``put`` adds to the value to be put.
    """

    add: dict[str, float] = field(default_factory=dict)
    put: dict[str, Value] = field(default_factory=dict)
    ttl: float = 0.0
    # Shards of this item's family: the batch's shard is taken modulo this.
    shards: int = 1

    def merge_add(self, deltas: Mapping[str, float]) -> None:
        for name, delta in deltas.items():
            current = self.put.get(name)
            if isinstance(current, (int, float)):
                self.put[name] = current + delta
            else:
                self.add[name] = self.add.get(name, 0) + delta

    def merge_put(self, values: Mapping[str, Value]) -> None:
        for name, value in values.items():
            self.add.pop(name, None)
            self.put[name] = value

    def expression(self) -> tuple[str, dict[str, str], dict[str, AttributeValue]]:
        """The UpdateExpression, attribute names and values of this update."""
        names = {"#ttl": "ttl"}
        values: dict[str, AttributeValue] = {":ttl": number(self.ttl)}
        sets = ["#ttl = :ttl"]
        adds = []
        for index, (name, value) in enumerate(sorted(self.put.items())):
            names[f"#p{index}"] = name
            values[f":p{index}"] = encode(value)
            sets.append(f"#p{index} = :p{index}")
        for index, (name, delta) in enumerate(sorted(self.add.items())):
            names[f"#a{index}"] = name
            values[f":a{index}"] = number(delta)
            adds.append(f"#a{index} :a{index}")
        expression = "SET " + ", ".join(sets)
        if adds:
            expression += " ADD " + ", ".join(adds)
        return expression, names, values


class PendingCounters:
    """Counter updates collected since the last flush, merged per logical item."""

    def __init__(self) -> None:
        self.updates: dict[tuple[str, str], CounterUpdate] = {}

    def __len__(self) -> int:
        return len(self.updates)

    def add(
        self,
        pk: str,
        sk: str,
        add: Mapping[str, float] | None = None,
        put: Mapping[str, Value] | None = None,
        *,
        ttl: float,
        shards: int,
    ) -> None:
        update = self.updates.get((pk, sk))
        if update is None:
            update = self.updates[(pk, sk)] = CounterUpdate(shards=shards)
        update.ttl = max(update.ttl, ttl)
        update.shards = max(update.shards, shards)
        if put:
            update.merge_put(put)
        if add:
            update.merge_add(add)

    def take(self) -> dict[tuple[str, str], CounterUpdate]:
        updates, self.updates = self.updates, {}
        return updates


@dataclass(slots=True)
class Transaction:
    """One idempotent TransactWriteItems, frozen when made: a resend must be identical."""

    token: str
    created: float
    items: list[dict[str, Any]]
    # The logical (pk, sk) of every update, for whoever wants to know what was counted.
    counted: list[tuple[str, str]]

    @property
    def receipt_pk(self) -> str:
        return RECEIPT_PREFIX + self.token


def build_transactions(
    table: str,
    updates: Mapping[tuple[str, str], CounterUpdate],
    shard: int,
    now: float,
) -> list[Transaction]:
    """The transactions for one flush: every update to shard ``shard`` (modulo each item's
    shard count), at most 99 per transaction, each with its token and receipt."""
    ordered = sorted(updates.items())
    transactions = []
    for start in range(0, len(ordered), MAX_UPDATES_PER_TRANSACTION):
        chunk = ordered[start : start + MAX_UPDATES_PER_TRANSACTION]
        token = uuid.uuid4().hex
        items: list[dict[str, Any]] = []
        for (pk, sk), update in chunk:
            expression, names, values = update.expression()
            items.append(
                {
                    "Update": {
                        "TableName": table,
                        "Key": key(shard_pk(pk, shard % update.shards), sk),
                        "UpdateExpression": expression,
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                }
            )
        items.append(receipt_put(table, token, now))
        transactions.append(Transaction(token, now, items, [k for k, _ in chunk]))
    return transactions


def receipt_put(table: str, token: str, now: float) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": table,
            "Item": {
                **key(RECEIPT_PREFIX + token, "-"),
                "ttl": number(int(now + RECEIPT_TTL_SECONDS)),
            },
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


def receipt_found(reasons: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a cancelled transaction was cancelled by its receipt: applied before."""
    codes = [reason.get("Code") for reason in reasons]
    return bool(codes) and codes[-1] == "ConditionalCheckFailed"


# -- reading shards back -------------------------------------------------------------------------


def query_all(
    client: Any,
    table: str,
    pk: str,
    consistent: bool,
    sk_prefix: str = "",
    sk_between: tuple[str, str] | None = None,
) -> list[dict[str, AttributeValue]]:
    """Every item of one partition (optionally of sort keys starting with ``sk_prefix``, or
    between the two of ``sk_between``, both included)."""
    query: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": pk}},
        "ConsistentRead": consistent,
    }
    if sk_prefix:
        query["KeyConditionExpression"] += " AND begins_with(sk, :prefix)"
        query["ExpressionAttributeValues"][":prefix"] = {"S": sk_prefix}
    elif sk_between:
        query["KeyConditionExpression"] += " AND sk BETWEEN :low AND :high"
        query["ExpressionAttributeValues"][":low"] = {"S": sk_between[0]}
        query["ExpressionAttributeValues"][":high"] = {"S": sk_between[1]}
    items: list[dict[str, AttributeValue]] = []
    while True:
        page = client.query(**query)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class ShardReader:
    """Reads every shard of a logical partition, several at a time (one consistent Query per
    shard: a batch acknowledged before the read started is in what it returns)."""

    THREADS = 8

    def __init__(self, table: str) -> None:
        self.table = table
        self._pool: ThreadPoolExecutor | None = None

    def read(
        self,
        client: Any,
        pk: str,
        shards: int,
        sk_prefix: str = "",
        sk_between: tuple[str, str] | None = None,
    ) -> list[tuple[int, dict[str, AttributeValue]]]:
        """(shard, item) for every item of shards 0..shards-1 of ``pk``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="berry-shards")
        pages = self._pool.map(
            lambda shard: query_all(
                client, self.table, shard_pk(pk, shard), True, sk_prefix, sk_between
            ),
            range(shards),
        )
        return [(shard, item) for shard, page in enumerate(pages) for item in page]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
