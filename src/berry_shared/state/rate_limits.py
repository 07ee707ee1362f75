"""Rate limits in DynamoDB: one conditional write per admitted request, exact across instances.

Each (user, window) has one counter item per window index; a request is admitted by an
``ADD`` conditioned on the count staying under what the sliding two-window rule allows, so
concurrent instances can never admit more than the limit. The finished window's count is read
once per window and user.

At scale: the counter item of one user's window takes one write per admitted request, so a
single rate-limited user whose admitted rate nears ~1,000 requests per second across the
fleet would hit DynamoDB's per-partition write limit (a limit that high is rare; refused
requests cost no write here, see ``RefusalCache``).
"""

from __future__ import annotations

import math
from typing import Any

from .counters import key, number
from .windows import overlap, sliding_rate, sliding_window_wait

Windows = tuple[tuple[int, int], ...]


class RefusalCache:
    """When DynamoDB refused a user, refuse them here until the wait it gave has passed.

    Exact, not an approximation: within a window the count only grows, and the wait already
    accounts for the earlier window sliding away, so nothing can admit the user sooner. It
    keeps a client hammering past its limit from costing one (failed) write per request.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._until: dict[tuple[str, Windows], float] = {}

    def wait(self, user_id: str, windows: Windows, now: float) -> float | None:
        until = self._until.get((user_id, windows), 0.0)
        return until - now if now < until else None

    def refused(self, user_id: str, windows: Windows, now: float, wait: float) -> None:
        if len(self._until) > self.MAX_ENTRIES:
            self._until = {k: v for k, v in self._until.items() if v > now}
        self._until[(user_id, windows)] = now + wait


class RateLimitCounter:
    """The conditional writes; called from executor threads (blocking boto3 calls)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._previous_counts: dict[tuple[str, int, int], int] = {}

    def _previous(self, client: Any, user_id: str, window: int, index: int) -> int:
        """The finished window's count: read once per window and user, then cached."""
        cache_key = (user_id, window, index - 1)
        count = self._previous_counts.get(cache_key)
        if count is None:
            item = client.get_item(
                TableName=self.table,
                Key=key(f"rate#{user_id}", f"{window}#{index - 1}"),
                ConsistentRead=True,
            ).get("Item", {})
            count = int(_num(item, "c"))
            for stale in [k for k in self._previous_counts if k[:2] == cache_key[:2]]:
                self._previous_counts.pop(stale, None)  # executor threads share this cache
            self._previous_counts[cache_key] = count
        return count

    def rates(self, client: Any, user_id: str, windows: list[int], now: float) -> dict[int, float]:
        """The sliding-window count of each window, as the limiter sees it (for reports)."""
        rates = {}
        for window in windows:
            index = int(now // window)
            counts = [
                _num(
                    client.get_item(
                        TableName=self.table,
                        Key=key(f"rate#{user_id}", f"{window}#{i}"),
                        ConsistentRead=True,
                    ).get("Item", {}),
                    "c",
                )
                for i in (index - 1, index)
            ]
            rates[window] = sliding_rate(counts[0], counts[1], window, now)
        return rates

    def count(self, client: Any, user_id: str, windows: Windows, now: float) -> float | None:
        """None if admitted (and counted), else the seconds until it would be."""
        updates = []
        plans = []
        for window, limit in windows:
            index = int(now // window)
            previous = self._previous(client, user_id, window, index)
            # Admitted while previous * overlap + current < limit, i.e. current <= most.
            most = math.ceil(limit - previous * overlap(window, now)) - 1
            if most < 0:
                # Refused by the previous window alone: no write, wait for it to slide away.
                return sliding_window_wait(previous, 0, limit, window, now) or 0.001
            plans.append((window, limit, index, previous))
            updates.append(
                {
                    "TableName": self.table,
                    "Key": key(f"rate#{user_id}", f"{window}#{index}"),
                    "UpdateExpression": "ADD c :one SET #ttl = :ttl",
                    "ConditionExpression": "attribute_not_exists(c) OR c <= :most",
                    "ExpressionAttributeNames": {"#ttl": "ttl"},
                    "ExpressionAttributeValues": {
                        ":one": number(1),
                        ":most": number(most),
                        ":ttl": number((index + 2) * window + 60),
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            )
        try:
            if len(updates) == 1:
                client.update_item(**updates[0])
            else:
                # All windows or none: a request refused by the hour must not use a minute slot.
                client.transact_write_items(TransactItems=[{"Update": u} for u in updates])
            return None
        except client.exceptions.ConditionalCheckFailedException as exc:
            currents = [int(_num(exc.response.get("Item", {}), "c"))]
            refused = plans
        except client.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons", [])
            refused, currents = [], []
            for plan, reason in zip(plans, reasons, strict=False):
                if reason.get("Code") == "ConditionalCheckFailed":
                    refused.append(plan)
                    currents.append(int(_num(reason.get("Item", {}), "c")))
            if not refused:
                raise
        waits = [
            sliding_window_wait(previous, current, limit, window, now) or 0.0
            for (window, limit, _, previous), current in zip(refused, currents, strict=True)
        ]
        return max(max(waits), 0.001)


def _num(item: dict[str, Any], name: str) -> float:
    value = item.get(name)
    return float(value["N"]) if value else 0.0
