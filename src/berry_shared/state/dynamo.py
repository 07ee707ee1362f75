"""DynamoDB state: every instance (every Lambda container) shares one view of the backends.

The hot path never waits on DynamoDB for statistics. Each outcome updates this instance's
in-memory view at once and adds to a per-backend delta; a background task sends the deltas
as atomic ``ADD`` updates in one ``TransactWriteItems`` (at least every second, and right
away after a failure) and reads the shared view back about once a second. Each batch carries
an idempotency token, so a batch resent after an unclear failure (DynamoDB applied it, the
answer was lost) is not counted twice. Circuit transitions and half-open trial
leases are conditional writes, so two instances never both take a trial or lose an opening.
Rate limits are one conditional write per request for users that have limits.

If DynamoDB is unreachable or throttles, this instance keeps serving from its local view
(rate limits and trials decided locally), ``status()`` says so, deltas pile up and are sent
when it is back. No request fails because of the store.

Table layout (``pk``, ``sk`` strings; TTL attribute ``ttl``):
    pk="backend"        sk=<provider:model>      conf, consec, opened_at, trial_until,
                                                 cooldown_until, latency_ms, requests,
                                                 failures, last_request_at, last_error
    pk="rate#<user>"    sk=<window>#<index>      c (requests counted in that window)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..backend_state import ErrorClass
from ..config import Settings
from .memory import MemoryStateStore
from .store import StateStore, StoreStatus, sliding_window_wait, take_local_trial

logger = logging.getLogger("berry.state")

SYNC_INTERVAL_SECONDS = 1.0
# A burst of failures is sent as one flush, not one write each.
URGENT_COALESCE_SECONDS = 0.02
# After a DynamoDB error, decide rate limits and trials locally this long before retrying.
OUTAGE_BACKOFF_SECONDS = 2.0
BACKEND_TTL_SECONDS = 30 * 86400
BACKENDS_PK = "backend"
# TransactWriteItems takes at most 100 actions.
MAX_TRANSACTION_ITEMS = 100


def _n(value: float | int) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def _key(pk: str, sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _num(item: dict[str, Any], name: str, default: float = 0.0) -> float:
    value = item.get(name)
    return float(value["N"]) if value else default


@dataclass(slots=True)
class BackendDelta:
    """What this instance learned about one backend since its last flush."""

    confidence: float = 0.0
    requests: int = 0
    failures: int = 0
    # A success resets the shared consecutive-failure count to the failures seen after it.
    reset_consecutive: bool = False
    consecutive: int = 0
    latency_ms: float | None = None
    last_request_at: float = 0.0
    last_error: ErrorClass | None = None
    cooldown_until: float = 0.0
    # Circuit transitions seen here: closed the circuit opened at ``closed_epoch``; opened
    # at ``opened_at`` (replacing ``reopened_epoch`` when a trial failed).
    closed_epoch: float = 0.0
    opened_at: float = 0.0
    reopened_epoch: float = 0.0


def make_client(endpoint: str | None) -> Any:
    """A low-level DynamoDB client with short timeouts (boto3 is imported only here)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    extra: dict[str, Any] = {}
    if endpoint:
        extra["endpoint_url"] = endpoint
        if session.get_credentials() is None:
            # DynamoDB Local accepts any credentials; don't make users invent some.
            extra.update(aws_access_key_id="local", aws_secret_access_key="local")
    return session.client(
        "dynamodb",
        region_name=session.region_name or "us-east-1",
        config=Config(
            connect_timeout=1,
            read_timeout=2,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=16,
        ),
        **extra,
    )


class DynamoStateStore(StateStore):
    kind = "dynamodb"

    def __init__(
        self, settings: Settings, table: str, endpoint: str | None = None, client: Any = None
    ) -> None:
        super().__init__(settings)
        self.table = table
        self.endpoint = endpoint
        self._client = client
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="berry-dynamodb")
        self._pending: dict[str, BackendDelta] = {}
        # Batches taken from _pending but not yet acknowledged, each with its idempotency token.
        # (token, batch, time of the batch): a resend must be byte-for-byte the same request.
        self._unsent: list[tuple[str, dict[str, BackendDelta], float]] = []
        self._sync_lock: asyncio.Lock | None = None
        self._local = MemoryStateStore(settings)  # rate limits while DynamoDB is out
        self._previous_counts: dict[tuple[str, int, int], int] = {}
        self._urgent: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._down_since = 0.0
        self._down_reason = ""
        self._retry_at = 0.0
        self._last_sync = 0.0
        self._last_flush = 0.0

    # -- recording (hot path: memory only) --------------------------------------------------

    def _delta(self, key: str) -> BackendDelta:
        delta = self._pending.get(key)
        if delta is None:
            delta = self._pending[key] = BackendDelta()
        return delta

    def record_success(self, key: str, latency_ms: float, now: float) -> None:
        state = self.state(key)
        confidence, opened_at = state.confidence, state.opened_at
        super().record_success(key, latency_ms, now)
        delta = self._delta(key)
        delta.confidence += state.confidence - confidence
        delta.requests += 1
        delta.reset_consecutive = True
        delta.consecutive = 0
        delta.latency_ms = state.latency_ms
        delta.last_request_at = now
        if opened_at:
            delta.closed_epoch = opened_at
            delta.opened_at = 0.0

    def record_failure(
        self, key: str, error: ErrorClass, now: float, retry_after: float | None = None
    ) -> None:
        state = self.state(key)
        confidence, opened_at, consecutive = (
            state.confidence,
            state.opened_at,
            state.consecutive_failures,
        )
        super().record_failure(key, error, now, retry_after)
        delta = self._delta(key)
        delta.confidence += state.confidence - confidence
        delta.requests += 1
        delta.failures += 1
        delta.consecutive += state.consecutive_failures - consecutive
        delta.last_request_at = now
        delta.last_error = error
        delta.cooldown_until = max(delta.cooldown_until, state.cooldown_until)
        if state.opened_at != opened_at:
            delta.opened_at, delta.reopened_epoch = state.opened_at, opened_at
        if self._urgent is not None:
            self._urgent.set()  # failures are flushed right away

    # -- decisions that must be shared -------------------------------------------------------

    def _store_usable(self) -> bool:
        return not self._down_since or time.monotonic() >= self._retry_at

    async def _call(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def acquire_trial(self, key: str, now: float, lease_seconds: float) -> bool:
        state = self.state(key)
        if not self._store_usable():
            return take_local_trial(state, now, lease_seconds, self.settings)
        if not take_local_trial(state, now, lease_seconds, self.settings):
            return False
        if not state.opened_at:
            return True  # closed: no trial needed
        try:
            won: bool = await self._call(self._take_trial, key, state.opened_at, now, lease_seconds)
        except Exception as exc:
            self._went_down(exc)
            return True  # the local lease decided
        self._came_back()
        if not won:
            state.trial_until = max(state.trial_until, now + lease_seconds)
        return won

    def _take_trial(self, key: str, opened_at: float, now: float, lease: float) -> bool:
        return self._update_if(
            key,
            "SET trial_until = :until",
            "(attribute_not_exists(opened_at) OR opened_at = :opened) AND "
            "(attribute_not_exists(trial_until) OR trial_until < :now)",
            {":until": _n(now + lease), ":opened": _n(opened_at), ":now": _n(now)},
        )

    def _update_if(self, key: str, update: str, condition: str, values: dict[str, Any]) -> bool:
        """One conditional update of a backend's item; False when the condition failed."""
        try:
            self._client.update_item(
                TableName=self.table,
                Key=_key(BACKENDS_PK, key),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    async def count_request(
        self, user_id: str, windows: list[tuple[int, int]], now: float
    ) -> float | None:
        if not self._store_usable():
            return await self._local.count_request(user_id, windows, now)
        try:
            wait: float | None = await self._call(self._count, user_id, windows, now)
        except Exception as exc:
            self._went_down(exc)
            return await self._local.count_request(user_id, windows, now)
        self._came_back()
        return wait

    def _previous(self, user_id: str, window: int, index: int) -> int:
        """The finished window's count: read once per window and user, then cached."""
        cache_key = (user_id, window, index - 1)
        count = self._previous_counts.get(cache_key)
        if count is None:
            item = self._client.get_item(
                TableName=self.table,
                Key=_key(f"rate#{user_id}", f"{window}#{index - 1}"),
                ConsistentRead=True,
            ).get("Item", {})
            count = int(_num(item, "c"))
            for stale in [k for k in self._previous_counts if k[:2] == cache_key[:2]]:
                self._previous_counts.pop(stale, None)  # executor threads share this cache
            self._previous_counts[cache_key] = count
        return count

    def _count(self, user_id: str, windows: list[tuple[int, int]], now: float) -> float | None:
        updates = []
        plans = []
        for window, limit in windows:
            index = int(now // window)
            previous = self._previous(user_id, window, index)
            overlap = 1.0 - (now % window) / window
            # Admitted while previous * overlap + current < limit, i.e. current <= most.
            most = math.ceil(limit - previous * overlap) - 1
            if most < 0:
                # Refused by the previous window alone: no write, wait for it to slide away.
                return sliding_window_wait(previous, 0, limit, window, now) or 0.001
            plans.append((window, limit, index, previous))
            updates.append(
                {
                    "TableName": self.table,
                    "Key": _key(f"rate#{user_id}", f"{window}#{index}"),
                    "UpdateExpression": "ADD c :one SET #ttl = :ttl",
                    "ConditionExpression": "attribute_not_exists(c) OR c <= :most",
                    "ExpressionAttributeNames": {"#ttl": "ttl"},
                    "ExpressionAttributeValues": {
                        ":one": _n(1),
                        ":most": _n(most),
                        ":ttl": _n((index + 2) * window + 60),
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            )
        try:
            if len(updates) == 1:
                self._client.update_item(**updates[0])
            else:
                # All windows or none: a request refused by the hour must not use a minute slot.
                self._client.transact_write_items(TransactItems=[{"Update": u} for u in updates])
            return None
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            currents = [int(_num(exc.response.get("Item", {}), "c"))]
            refused = plans
        except self._client.exceptions.TransactionCanceledException as exc:
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

    # -- background sync ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = make_client(self.endpoint)
        self._urgent = asyncio.Event()
        try:
            await self._call(self._ensure_table)
            await self.sync(read=True)
        except Exception as exc:
            self._went_down(exc)
        self._task = asyncio.create_task(self._run(), name="berry-dynamodb-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sync(read=False), timeout=3)  # last deltas
        self._executor.shutdown(wait=False)

    async def flush(self) -> None:
        await self.sync(read=False)

    async def settle(self) -> None:
        if not self._pending and not self._unsent:
            return
        urgent = self._urgent is not None and self._urgent.is_set()
        if urgent or time.monotonic() - self._last_flush >= SYNC_INTERVAL_SECONDS:
            await self.sync(read=False)

    async def _run(self) -> None:
        assert self._urgent is not None
        next_read = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), SYNC_INTERVAL_SECONDS)
                await asyncio.sleep(URGENT_COALESCE_SECONDS)
            self._urgent.clear()
            read = time.monotonic() >= next_read
            try:
                await self.sync(read=read)
            except Exception:  # a bug here must not stop syncing
                logger.exception("state sync failed")
            if read:
                next_read = time.monotonic() + SYNC_INTERVAL_SECONDS

    async def sync(self, read: bool = True) -> None:
        """Send pending deltas, then (if ``read``) adopt the shared view."""
        if not self._store_usable():
            return
        self._sync_lock = self._sync_lock or asyncio.Lock()
        async with self._sync_lock:
            pending, self._pending = list(self._pending.items()), {}
            now = time.time()
            for start in range(0, len(pending), MAX_TRANSACTION_ITEMS):
                # A token per batch makes a resend after an unclear failure idempotent.
                chunk = dict(pending[start : start + MAX_TRANSACTION_ITEMS])
                self._unsent.append((uuid.uuid4().hex, chunk, now))
            self._last_flush = time.monotonic()
            try:
                items = await self._call(self._exchange, read)
            except Exception as exc:
                self._went_down(exc)  # the unsent batches wait, tokens and all
                return
            self._came_back()
            self._last_sync = time.time()
            if items is not None:
                self._adopt(items)

    def _exchange(self, read: bool) -> dict[str, dict[str, Any]] | None:
        while self._unsent:  # the loop thread waits for us: no one else touches the list
            token, batch, created = self._unsent[0]
            self._send(token, batch, created)
            self._unsent.pop(0)
        if not read:
            return None
        items: dict[str, dict[str, Any]] = {}
        query: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": BACKENDS_PK}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**query)
            for item in page.get("Items", []):
                items[item["sk"]["S"]] = item
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        for key, item in items.items():
            self._clamp_shared(key, item)
        return items

    def _send(self, token: str, batch: dict[str, BackendDelta], now: float) -> None:
        """One batch: every backend's counters in one idempotent transaction, then the
        circuit transitions, each conditional on the state this instance saw."""
        self._client.transact_write_items(
            TransactItems=[{"Update": self._delta_update(k, d, now)} for k, d in batch.items()],
            ClientRequestToken=token,
        )
        for key, delta in batch.items():
            if delta.closed_epoch and not delta.opened_at:
                # Close only the opening we saw; a newer one (another instance) stands.
                self._update_if(
                    key,
                    "SET opened_at = :zero, trial_until = :zero",
                    "opened_at = :epoch",
                    {":zero": _n(0), ":epoch": _n(delta.closed_epoch)},
                )
            if delta.opened_at:
                self._update_if(
                    key,
                    "SET opened_at = :now, trial_until = :zero",
                    "attribute_not_exists(opened_at) OR opened_at = :zero OR opened_at = :seen",
                    {
                        ":now": _n(delta.opened_at),
                        ":zero": _n(0),
                        ":seen": _n(delta.reopened_epoch),
                    },
                )

    def _delta_update(self, key: str, delta: BackendDelta, now: float) -> dict[str, Any]:
        values: dict[str, Any] = {
            ":conf": _n(delta.confidence),
            ":requests": _n(delta.requests),
            ":failures": _n(delta.failures),
            ":ttl": _n(now + BACKEND_TTL_SECONDS),
        }
        sets = ["#ttl = :ttl"]
        adds = ["conf :conf", "requests :requests", "failures :failures"]
        if delta.reset_consecutive:
            sets.append("consec = :consec")
            values[":consec"] = _n(delta.consecutive)
        elif delta.consecutive:
            adds.append("consec :consec")
            values[":consec"] = _n(delta.consecutive)
        if delta.latency_ms is not None:
            sets.append("latency_ms = :latency")
            values[":latency"] = _n(delta.latency_ms)
        if delta.last_request_at:
            sets.append("last_request_at = :at")
            values[":at"] = _n(delta.last_request_at)
        if delta.last_error is not None:
            sets.append("last_error = :error")
            values[":error"] = {"S": delta.last_error.value}
        if delta.cooldown_until:
            sets.append("cooldown_until = :cooldown")
            values[":cooldown"] = _n(delta.cooldown_until)
        return {
            "TableName": self.table,
            "Key": _key(BACKENDS_PK, key),
            "UpdateExpression": f"SET {', '.join(sets)} ADD {', '.join(adds)}",
            "ExpressionAttributeNames": {"#ttl": "ttl"},
            "ExpressionAttributeValues": values,
        }

    def _clamp_shared(self, key: str, item: dict[str, Any]) -> None:
        """ADD cannot clamp: pull a shared confidence that drifted out of bounds back in."""
        confidence_sum = _num(item, "conf")
        clamped = self._clamp(confidence_sum)
        if clamped == confidence_sum:
            return
        self._update_if(
            key,
            "SET conf = :clamped",
            "conf = :seen",
            {":clamped": _n(clamped), ":seen": item["conf"]},
        )
        item["conf"] = _n(clamped)

    def _clamp(self, confidence_sum: float) -> float:
        """The stored ``conf`` is the sum of changes from initial_confidence; keep it in range."""
        smart = self.settings.smart_ai
        low = smart.min_confidence - smart.initial_confidence
        high = 1.0 - smart.initial_confidence
        return min(high, max(low, confidence_sum))

    def _adopt(self, items: dict[str, dict[str, Any]]) -> None:
        """Take the shared view, then re-apply what happened here since the flush."""
        initial = self.settings.smart_ai.initial_confidence
        for key, item in items.items():
            state = self.state(key)
            state.confidence = initial + self._clamp(_num(item, "conf"))
            state.consecutive_failures = int(_num(item, "consec"))
            state.opened_at = _num(item, "opened_at")
            state.trial_until = max(state.trial_until, _num(item, "trial_until"))
            state.cooldown_until = max(state.cooldown_until, _num(item, "cooldown_until"))
            if "latency_ms" in item:
                state.latency_ms = _num(item, "latency_ms")
            state.requests = int(_num(item, "requests"))
            state.failures = int(_num(item, "failures"))
            state.last_request_at = max(state.last_request_at, _num(item, "last_request_at"))
            if "last_error" in item:
                state.last_error = ErrorClass(item["last_error"]["S"])
            pending = self._pending.get(key)
            if pending is not None:
                self._reapply(key, pending)

    def _reapply(self, key: str, delta: BackendDelta) -> None:
        state = self.state(key)
        smart = self.settings.smart_ai
        state.confidence = min(1.0, max(smart.min_confidence, state.confidence + delta.confidence))
        state.requests += delta.requests
        state.failures += delta.failures
        if delta.reset_consecutive:
            state.consecutive_failures = delta.consecutive
        else:
            state.consecutive_failures += delta.consecutive
        if delta.opened_at:
            state.opened_at = delta.opened_at
        elif delta.closed_epoch:
            state.opened_at = 0.0

    # -- health ------------------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        if not self._down_since:
            self._down_since = time.time()
            logger.warning("DynamoDB unavailable, serving from the local view: %s", _reason(exc))
        self._down_reason = _reason(exc)
        self._retry_at = time.monotonic() + OUTAGE_BACKOFF_SECONDS
        if self.endpoint and self._down_reason == "ResourceNotFoundException":
            # DynamoDB Local restarted in memory and lost the table: make it again.
            loop = asyncio.get_running_loop()
            loop.run_in_executor(self._executor, self._ensure_table_quietly)

    def _ensure_table_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._ensure_table()

    def _came_back(self) -> None:
        if self._down_since:
            logger.warning("DynamoDB is back after %.1f s", time.time() - self._down_since)
            self._down_since = 0.0
            self._down_reason = ""

    def status(self) -> StoreStatus:
        if self._down_since:
            return StoreStatus(
                self.kind,
                False,
                f"table {self.table} unreachable for {time.time() - self._down_since:.0f} s "
                f"({self._down_reason}); serving from this instance's local view",
            )
        age = f"{time.time() - self._last_sync:.1f} s ago" if self._last_sync else "not yet"
        return StoreStatus(self.kind, True, f"table {self.table}, shared view synced {age}")

    # -- table ---------------------------------------------------------------------------------

    def _ensure_table(self) -> None:
        """Create the table where it is missing (DynamoDB Local); on AWS, SAM creates it."""
        client = self._client
        try:
            client.describe_table(TableName=self.table)
            return
        except client.exceptions.ResourceNotFoundException:
            if not self.endpoint:
                raise
        with contextlib.suppress(client.exceptions.ResourceInUseException):
            client.create_table(
                TableName=self.table,
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        client.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
        )
        with contextlib.suppress(Exception):  # DynamoDB Local accepts TTL settings but ignores them
            client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
            )


def _reason(exc: BaseException) -> str:
    """A short reason for logs and /health: an error code, never a credential or a body."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__
