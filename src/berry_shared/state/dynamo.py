"""DynamoDB state: every instance (every Lambda container) shares one view of the backends.

The hot path never waits on DynamoDB for statistics. Each outcome updates this instance's
in-memory view at once and adds to a per-backend delta. About once a second (and within
0.2 s of a failure) the instance sends its deltas, and any other counters queued with
``add_counters``, as atomic ``ADD`` updates in one idempotent ``TransactWriteItems`` to one
shard chosen at random (see counters.py: a token and a receipt make every batch count exactly
once, however often it is resent). Circuit openings and closings and the half-open trial
lease are conditional writes on one control item per backend, so they stay exact: two
instances never both take a trial, and an opening is never lost.

Reading: an instance serving requests reads the control partition (one small consistent
``Query``) about once a second: circuit states, and the rollup, an item that holds every
backend's statistics summed over the shards. One serving instance at a time recomputes the
rollup every ``rollup_seconds`` (see rollup.py), so the cost of reading shards does not grow
with the fleet. An instance that served nothing since its last read reads every 15 s, or
when its view is looked at (a report, /health) and over a second old. Staleness:
    circuit open/closed, trial:          about 1 s (the refresh), as before
    confidence, counts, latency, health: rollup_seconds + ~1 s while containers are busy;
                                         up to rollup_seconds + 15 s + 1 s at worst
                                         (the competition for the rollup is spread out)
    this instance's own outcomes:        at once (its view re-applies them over the rollup)
    an idle instance's first request:    its view may be 15 s old (refreshed right after)

If DynamoDB is unreachable or keeps throttling, this instance keeps serving from its local
view (rate limits and trials decided locally), ``status()`` says so, batches pile up and are
sent when it is back. No request fails because of the store. Throttling and transaction
conflicts are first retried with jittered backoff; a retried batch is the same transaction.

The table layout is in layout.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..backend_state import BackendState, ErrorClass
from ..config import Settings
from ..usage import UsageCounts
from .counters import (
    CounterUpdate,
    PendingCounters,
    ShardReader,
    Transaction,
    build_transactions,
    decode_item,
    key,
    number,
    query_all,
    receipt_found,
)
from .layout import (
    CONTROL_PK,
    ITEM_TTL_SECONDS,
    LIMITS_PK,
    SPEND_TTL_SECONDS,
    STATS_PK,
    USAGE_PK,
    USAGE_TTL_SECONDS,
    item_ttl,
    spend_sk,
    tokens_sk,
    usage_sk,
)
from .ledger import TOKENS
from .memory import MemoryStateStore
from .rate_limits import RateLimitCounter, RefusalCache
from .rollup import ROLLUP_SK, Rollup, RollupKeeper, decode_rollup
from .shards import (
    DEFAULT_FLEET_SIZE,
    BackendTotals,
    Value,
    backoff_delay,
    jittered,
    shards_for_fleet,
    sum_counters,
)
from .store import StateStore, StoreStatus, take_local_trial
from .windows import sliding_rate, sliding_window_wait

logger = logging.getLogger("berry.state")

FLUSH_INTERVAL_SECONDS = 1.0
# A burst of failures is sent as one flush, not one write each; and a container that keeps
# failing flushes at most this often.
URGENT_COALESCE_SECONDS = 0.02
URGENT_MIN_GAP_SECONDS = 0.2
# How often an active instance reads the control partition (circuits and rollup); idle ones
# read less, and at once when traffic comes back.
REFRESH_SECONDS = 1.0
IDLE_REFRESH_SECONDS = 15.0
REFRESH_JITTER = 0.1
DEFAULT_ROLLUP_SECONDS = 3.0
# After a DynamoDB error, decide rate limits and trials locally this long before retrying.
OUTAGE_BACKOFF_SECONDS = 2.0
# Retries of one transaction within a flush (with full-jitter backoff) before the flush gives
# up and the batch waits for the next one.
TRANSACT_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 1.0
ACKED_KEEP_SECONDS = 600.0
# The usage counters' attributes, in UsageCounts' order.
USAGE_FIELDS = ("requests", "prompt", "completion", "cached", "cost")
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TransactionConflictException",
        "TransactionInProgressException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
RETRYABLE_REASONS = frozenset(
    {"TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError"}
)


@dataclass(frozen=True, slots=True)
class StoreTuning:
    """How the store is sized: shards from the expected fleet, and the rollup period.

    Environment: ``BERRY_STATE_FLEET_SIZE`` (warm containers expected at peak, default 100),
    ``BERRY_STATE_SHARDS`` (overrides the shard count derived from it) and
    ``BERRY_STATE_ROLLUP_SECONDS`` (default 3).
    """

    fleet_size: int = DEFAULT_FLEET_SIZE
    shards: int = shards_for_fleet(DEFAULT_FLEET_SIZE)
    rollup_seconds: float = DEFAULT_ROLLUP_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> StoreTuning:
        fleet = int(environ.get("BERRY_STATE_FLEET_SIZE") or DEFAULT_FLEET_SIZE)
        shards = int(environ.get("BERRY_STATE_SHARDS") or shards_for_fleet(fleet))
        rollup = float(environ.get("BERRY_STATE_ROLLUP_SECONDS") or DEFAULT_ROLLUP_SECONDS)
        if fleet < 1 or shards < 1 or rollup <= 0:
            raise ValueError(
                "BERRY_STATE_FLEET_SIZE and BERRY_STATE_SHARDS must be at least 1, "
                "BERRY_STATE_ROLLUP_SECONDS above 0"
            )
        return cls(fleet_size=fleet, shards=shards, rollup_seconds=rollup)


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
    latency_at: float = 0.0
    last_success_at: float = 0.0
    last_failure_at: float = 0.0
    last_error: ErrorClass | None = None
    cooldown_until: float = 0.0
    # Circuit transitions seen here: closed the circuit opened at ``closed_epoch``; opened
    # at ``opened_at`` (replacing ``reopened_epoch`` when a trial failed).
    closed_epoch: float = 0.0
    opened_at: float = 0.0
    reopened_epoch: float = 0.0

    def counters(self) -> tuple[dict[str, float], dict[str, Value]]:
        """This delta as a stats shard update: (ADDs, SETs)."""
        add: dict[str, float] = {"batches": 1}
        for name, value in (
            ("conf", self.confidence),
            ("requests", self.requests),
            ("failures", self.failures),
        ):
            if value:
                add[name] = value
        put: dict[str, Value] = {}
        if self.reset_consecutive:
            put["consec"] = self.consecutive
        elif self.consecutive:
            add["consec"] = self.consecutive
        if self.last_success_at:
            put["last_success_at"] = self.last_success_at
        if self.last_failure_at:
            put["last_failure_at"] = self.last_failure_at
        if self.last_error is not None:
            put["last_error"] = self.last_error.value
        if self.latency_ms is not None:
            put["latency_ms"] = self.latency_ms
            put["latency_at"] = self.latency_at
        if self.cooldown_until:
            put["cooldown_until"] = self.cooldown_until
        return add, put


@dataclass(slots=True)
class Flush:
    """One transaction on its way, with the backend deltas it carries."""

    transaction: Transaction
    backends: dict[str, BackendDelta]
    # The per-user limits counters it adds to (sort key -> amount).
    limits: dict[str, float] = field(default_factory=dict)
    # The transaction is acknowledged; only the circuit transitions may remain.
    counted: bool = False


@dataclass(slots=True)
class View:
    """What one read of the control partition returned."""

    controls: dict[str, dict[str, Value]]
    rollup: Rollup


@dataclass(slots=True)
class CallCounts:
    """Retries seen by this store's flushes (the simulation and /health report them)."""

    conflicts: int = 0
    throttled: int = 0
    other_retries: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


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


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class DynamoStateStore(StateStore):
    kind = "dynamodb"

    def __init__(
        self,
        settings: Settings,
        table: str,
        endpoint: str | None = None,
        client: Any = None,
        tuning: StoreTuning | None = None,
    ) -> None:
        super().__init__(settings)
        self.table = table
        self.endpoint = endpoint
        self.tuning = tuning or StoreTuning.from_env()
        self.shards = self.tuning.shards
        self.instance_id = uuid.uuid4().hex[:12]
        self.retries = CallCounts()
        self._client = client
        self._rng = random.Random()
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="berry-dynamodb")
        self._reader = ShardReader(table)
        self._rollups = RollupKeeper(
            table,
            settings,
            self.shards,
            self.tuning.rollup_seconds,
            REFRESH_SECONDS,
            self.instance_id,
            self._reader,
        )
        self._pending: dict[str, BackendDelta] = {}
        self._counters = PendingCounters()
        # (when acknowledged, limits sort key -> amount) of this instance's batches.
        self._own_limits: list[tuple[float, dict[str, float]]] = []
        # Flushes taken from the pending deltas but not yet acknowledged, oldest first.
        self._unsent: list[Flush] = []
        # (when acknowledged, deltas): re-applied over a rollup that started before that.
        self._acked: list[tuple[float, dict[str, BackendDelta]]] = []
        self._rollup = Rollup()
        self._adopted_rollup_at = -1.0
        self._sync_lock: asyncio.Lock | None = None
        self._local = MemoryStateStore(settings)  # rate limits while DynamoDB is out
        self._rate_limits = RateLimitCounter(table)
        self._refusals = RefusalCache()
        self._signal: asyncio.Event | None = None
        self._urgent = False
        self._woken = False
        # Not serving yet: a cold start never sums the shards before its first request.
        self._active = False
        self._idle = False
        self._last_read = 0.0
        self._task: asyncio.Task[None] | None = None
        self._down_since = 0.0
        self._down_reason = ""
        self._retry_at = 0.0
        self._last_sync = 0.0
        self._last_flush = 0.0

    # -- recording (hot path: memory only) --------------------------------------------------

    def state(self, key: str) -> BackendState:
        self._look()
        return super().state(key)

    def _view(self, key: str) -> BackendState:
        """The local view of a backend, for the store's own bookkeeping (not a look)."""
        return super().state(key)

    def _look(self) -> None:
        """Someone reads the view (a request being planned, a report): if this instance is
        idle and its view over a refresh old, refresh it now. A health check every 10 s
        thus costs one read per check, not one per second."""
        if (
            self._idle
            and self._signal is not None
            and time.monotonic() - self._last_read >= REFRESH_SECONDS
            and self._store_usable()
        ):
            self._idle = False  # one wake per burst of looks; the loop decides after the read
            self._woken = True
            self._signal.set()

    def _traffic(self) -> None:
        """This instance serves requests: flush and refresh at the active rate, and take part
        in the rollup. An idle loop (waiting up to 15 s) is woken at once."""
        self._active = True
        if self._idle and self._signal is not None:
            self._idle = False
            self._woken = True
            self._signal.set()

    def _delta(self, key: str) -> BackendDelta:
        delta = self._pending.get(key)
        if delta is None:
            delta = self._pending[key] = BackendDelta()
        return delta

    def record_success(self, key: str, latency_ms: float, now: float) -> None:
        self._traffic()
        state = self.state(key)
        confidence, opened_at = state.confidence, state.opened_at
        super().record_success(key, latency_ms, now)
        delta = self._delta(key)
        delta.confidence += state.confidence - confidence
        delta.requests += 1
        delta.reset_consecutive = True
        delta.consecutive = 0
        delta.latency_ms, delta.latency_at = state.latency_ms, now
        delta.last_success_at = max(delta.last_success_at, now)
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
        self._traffic()
        super().record_failure(key, error, now, retry_after)
        delta = self._delta(key)
        delta.confidence += state.confidence - confidence
        delta.requests += 1
        delta.failures += 1
        delta.consecutive += state.consecutive_failures - consecutive
        delta.last_failure_at = max(delta.last_failure_at, now)
        delta.last_error = error
        delta.cooldown_until = max(delta.cooldown_until, state.cooldown_until)
        if state.opened_at != opened_at:
            delta.opened_at, delta.reopened_epoch = state.opened_at, opened_at
        self._urgent = True  # failures are flushed right away
        if self._signal is not None:
            self._signal.set()

    def record_latency_floor(self, key: str, at_least_ms: float, now: float) -> None:
        self._traffic()
        state = self.state(key)
        before = state.latency_ms
        super().record_latency_floor(key, at_least_ms, now)
        if state.latency_ms != before:
            delta = self._delta(key)
            delta.latency_ms, delta.latency_at = state.latency_ms, now

    def add_counters(
        self,
        pk: str,
        sk: str,
        add: Mapping[str, float] | None = None,
        put: Mapping[str, Value] | None = None,
        *,
        ttl_seconds: float = ITEM_TTL_SECONDS,
        shards: int | None = None,
    ) -> None:
        """Queue atomic changes to the counter item ``(pk, sk)``; sent with the next flush.

        ``add`` attributes are summed over every instance and shard (requests, tokens, cost);
        ``put`` ones are set (see CounterUpdate). The item is written to one of ``shards``
        shards (default: the store's), so that no item is hot; ``read_counters`` sums them.
        """
        self._traffic()
        self._counters.add(
            pk, sk, add, put, ttl=time.time() + ttl_seconds, shards=shards or self.shards
        )

    # -- per-user accounting, shared by every instance ------------------------------------------

    def record_usage(self, user_id: str, model_key: str, day: str, counts: UsageCounts) -> None:
        super().record_usage(user_id, model_key, day, counts)
        self.add_counters(
            USAGE_PK,
            usage_sk(day, user_id, model_key),
            {
                "requests": counts.requests,
                "prompt": counts.prompt_tokens,
                "completion": counts.completion_tokens,
                "cached": counts.cached_tokens,
                "cost": counts.cost_nano,
            },
            {"user": user_id, "model": model_key, "day": day},
            ttl_seconds=USAGE_TTL_SECONDS,
        )

    def add_spend(self, user_id: str, month: str, cost_nano: int) -> None:
        super().add_spend(user_id, month, cost_nano)
        self._add_limit(spend_sk(month, user_id), cost_nano, SPEND_TTL_SECONDS)

    def add_tokens(self, user_id: str, windows: list[int], tokens: int, now: float) -> None:
        super().add_tokens(user_id, windows, tokens, now)
        for window in windows:
            index = int(now // window)
            expires = (index + 2) * window + 60 - now
            self._add_limit(tokens_sk(window, index, user_id), tokens, expires)

    def _add_limit(self, sk: str, amount: float, ttl_seconds: float) -> None:
        self.add_counters(LIMITS_PK, sk, {"v": amount}, ttl_seconds=ttl_seconds)

    def _shared_limit(self, sk: str) -> float:
        """The fleet's total of a limits counter: the rollup's sum, plus what this instance
        added that the rollup cannot include (pending, unsent, or acknowledged after it
        started). A batch committed just before the rollup started and acknowledged just
        after may count twice until the next rollup: limits then admit less, never more."""
        total = self._rollup.limits.get(sk, 0.0)
        since = self._rollup.at
        total += sum(limits.get(sk, 0.0) for at, limits in self._own_limits if at >= since)
        total += sum(f.limits.get(sk, 0.0) for f in self._unsent if not f.counted)
        pending = self._counters.updates.get((LIMITS_PK, sk))
        return total + (pending.add.get("v", 0.0) if pending is not None else 0.0)

    def month_spend_nano(self, user_id: str, month: str) -> int:
        local = super().month_spend_nano(user_id, month)
        return int(max(local, self._shared_limit(spend_sk(month, user_id))))

    def _token_slot(self, user_id: str, window: int, now: float) -> tuple[float, float]:
        """(previous, current) fixed-window token counts: this instance's or the fleet's."""
        index = int(now // window)
        slot = self.ledger.slot(TOKENS, user_id, window, now)
        return (
            max(slot.previous, self._shared_limit(tokens_sk(window, index - 1, user_id))),
            max(slot.current, self._shared_limit(tokens_sk(window, index, user_id))),
        )

    def token_wait(self, user_id: str, windows: list[tuple[int, int]], now: float) -> float | None:
        waits = []
        for window, limit in windows:
            previous, current = self._token_slot(user_id, window, now)
            wait = sliding_window_wait(previous, current, limit, window, now)
            if wait is not None:
                waits.append(wait)
        return max(waits) if waits else None

    async def token_rates(self, user_id: str, windows: list[int], now: float) -> dict[int, float]:
        rates = {}
        for window in windows:
            previous, current = self._token_slot(user_id, window, now)
            rates[window] = sliding_rate(previous, current, window, now)
        return rates

    async def usage_report(
        self, user_ids: list[str] | None, days: list[str]
    ) -> dict[str, dict[str, UsageCounts]]:
        """Read from the table: every instance's counts (acknowledged batches)."""
        if not days or not self._store_usable():
            return await super().usage_report(user_ids, days)
        shards = max(self.shards, self._rollup.shards)
        between = (f"{days[0]}#", f"{days[-1]}#\U0010ffff")
        try:
            items = await self._call(self._reader.read, self._client, USAGE_PK, shards, "", between)
        except Exception as exc:
            self._went_down(exc)
            return await super().usage_report(user_ids, days)
        wanted_days = set(days)
        wanted_users = None if user_ids is None else set(user_ids)
        report: dict[str, dict[str, UsageCounts]] = {}
        for _, item in items:
            values = decode_item(item)
            user, model, day = values.get("user"), values.get("model"), values.get("day")
            if not isinstance(user, str) or not isinstance(model, str) or day not in wanted_days:
                continue
            if wanted_users is not None and user not in wanted_users:
                continue
            report.setdefault(user, {}).setdefault(model, UsageCounts()).add(
                UsageCounts(*(int(_number(values.get(name))) for name in USAGE_FIELDS))
            )
        return report

    async def request_rates(
        self, user_id: str, windows: list[int], limited: Collection[int], now: float
    ) -> dict[int, float | None]:
        """Windows with a limit: the limiter's own shared counts. Windows without one are
        not counted fleet-wide (it would cost a write per user and second for a number
        nothing enforces): None."""
        counted = [window for window in windows if window in limited]
        rates: dict[int, float | None] = dict.fromkeys(windows)
        if counted and self._store_usable():
            try:
                rates.update(
                    await self._call(self._rate_limits.rates, self._client, user_id, counted, now)
                )
            except Exception as exc:
                self._went_down(exc)
        return rates

    async def read_counters(
        self, pk: str, sk_prefix: str = "", shards: int | None = None
    ) -> dict[str, dict[str, float]]:
        """Every counter item of ``pk`` (sort keys starting with ``sk_prefix``), its number
        attributes summed over the shards. One consistent Query per shard."""
        count = max(shards or self.shards, self._rollup.shards)
        items = await self._call(self._reader.read, self._client, pk, count, sk_prefix)
        by_sk: dict[str, list[dict[str, Value]]] = {}
        for _, item in items:
            by_sk.setdefault(item["sk"]["S"], []).append(decode_item(item))
        return {sk: sum_counters(shard_items) for sk, shard_items in by_sk.items()}

    @property
    def _rollup_owed(self) -> bool:
        """This instance sent counts that the rollup it adopted does not include yet."""
        return bool(self._acked)

    @property
    def backlog(self) -> int:
        """Deltas and batches not yet acknowledged by DynamoDB."""
        return len(self._pending) + len(self._counters) + len(self._unsent)

    # -- decisions that must be shared -------------------------------------------------------

    def _store_usable(self) -> bool:
        return not self._down_since or time.monotonic() >= self._retry_at

    async def _call(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def acquire_trial(self, key: str, now: float, lease_seconds: float) -> bool:
        self._traffic()
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
            {":until": number(now + lease), ":opened": number(opened_at), ":now": number(now)},
        )

    def _update_if(self, sk: str, update: str, condition: str, values: dict[str, Any]) -> bool:
        """One conditional update of a control item; False when the condition failed."""
        try:
            self._client.update_item(
                TableName=self.table,
                Key=key(CONTROL_PK, sk),
                UpdateExpression=f"{update}, #ttl = :ttl",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={**values, ":ttl": item_ttl()},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    async def count_request(
        self, user_id: str, windows: list[tuple[int, int]], now: float
    ) -> float | None:
        self._traffic()
        frozen = tuple(windows)
        cached = self._refusals.wait(user_id, frozen, now)
        if cached is not None:
            return cached
        if not self._store_usable():
            return await self._local.count_request(user_id, windows, now)
        try:
            wait: float | None = await self._call(
                self._rate_limits.count, self._client, user_id, frozen, now
            )
        except Exception as exc:
            self._went_down(exc)
            return await self._local.count_request(user_id, windows, now)
        self._came_back()
        if wait is not None:
            self._refusals.refused(user_id, frozen, now, wait)
        return wait

    # -- background sync ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = make_client(self.endpoint)
        self._signal = asyncio.Event()
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
            await asyncio.wait_for(self.sync(read=False, force=True), timeout=3)  # last deltas
        self._executor.shutdown(wait=False)
        self._reader.close()

    async def flush(self) -> None:
        await self.sync(read=False)

    async def drain(self, within_seconds: float) -> bool:
        """Flush until nothing is left unacknowledged (True), or give up after
        ``within_seconds`` (False)."""
        deadline = time.monotonic() + within_seconds
        while True:
            await self.sync(read=False, force=True)
            if not self.backlog:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def settle(self) -> None:
        if not self.backlog:
            return
        if self._urgent or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_SECONDS:
            await self.sync(read=False)

    async def rollup(self) -> None:
        """Recompute the shared rollup now and adopt it (tests, tools; normally automatic)."""
        self._sync_lock = self._sync_lock or asyncio.Lock()
        async with self._sync_lock:
            view = await self._call(self._read_control)
            view.rollup = await self._call(
                self._rollups.recompute, self._client, view.rollup, False
            )
            self._adopt(view)

    async def _run(self) -> None:
        assert self._signal is not None
        next_read = time.monotonic() + jittered(REFRESH_SECONDS, REFRESH_JITTER, self._rng)
        while True:
            now = time.monotonic()
            due = next_read
            if self.backlog:
                due = min(due, self._last_flush + FLUSH_INTERVAL_SECONDS)
            if self._down_since:
                due = max(due, self._retry_at)  # sync() would do nothing before then
            if not self._urgent and not self._woken and due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._signal.wait(), due - now)
            self._signal.clear()
            if self._urgent:
                gap = self._last_flush + URGENT_MIN_GAP_SECONDS - time.monotonic()
                await asyncio.sleep(max(URGENT_COALESCE_SECONDS, gap))
            self._urgent = False
            read = self._woken or time.monotonic() >= next_read
            self._woken = False
            try:
                await self.sync(read=read)
            except Exception:  # a bug here must not stop syncing
                logger.exception("state sync failed")
            await asyncio.sleep(0)  # whatever happened, never hold the event loop
            if read:
                active, self._active = self._active, False
                # Still owed a rollup: what it sent is not in the shared view yet.
                active = active or self._rollup_owed
                self._idle = not active
                interval = REFRESH_SECONDS if active else IDLE_REFRESH_SECONDS
                next_read = time.monotonic() + jittered(interval, REFRESH_JITTER, self._rng)

    async def sync(self, read: bool = True, force: bool = False) -> None:
        """Send pending deltas, then (if ``read``) adopt the shared view.

        ``force`` tries even during the backoff after an error (a last flush at shutdown).
        """
        if not force and not self._store_usable():
            return
        self._sync_lock = self._sync_lock or asyncio.Lock()
        async with self._sync_lock:
            if self._pending or self._counters:
                # The flush clock measures sends: a read alone must not postpone one.
                self._last_flush = time.monotonic()
            self._take_batch(time.time())
            try:
                view = await self._call(self._exchange, read, self._active or self._rollup_owed)
            except Exception as exc:
                self._went_down(exc)  # the unsent batches wait, tokens and all
                return
            self._came_back()
            if view is not None:
                self._last_sync = time.time()
                self._last_read = time.monotonic()
                self._adopt(view)

    def _take_batch(self, now: float) -> None:
        """Turn what is pending into transactions, all to one shard chosen at random."""
        if not self._pending and not self._counters:
            return
        deltas, self._pending = self._pending, {}
        updates = self._counters.take()
        for backend, delta in deltas.items():
            update = updates.setdefault((STATS_PK, backend), CounterUpdate(shards=self.shards))
            update.ttl = max(update.ttl, now + ITEM_TTL_SECONDS)
            add, put = delta.counters()
            update.merge_put(put)
            update.merge_add(add)
        shard = self._rng.randrange(1 << 30)  # each item takes it modulo its shard count
        for transaction in build_transactions(self.table, updates, shard, now):
            carried = {
                sk: deltas[sk] for pk, sk in transaction.counted if pk == STATS_PK and sk in deltas
            }
            limits = {
                sk: updates[(pk, sk)].add.get("v", 0.0)
                for pk, sk in transaction.counted
                if pk == LIMITS_PK
            }
            self._unsent.append(Flush(transaction, carried, limits))

    def _exchange(self, read: bool, active: bool) -> View | None:
        while self._unsent:  # the loop thread waits for us: no one else touches the list
            flush = self._unsent[0]
            if not flush.counted:
                self._transact(flush.transaction)
                flush.counted = True
                acked_at = time.time()
                # Kept until a rollup that started after it is adopted (bounded if none comes).
                self._acked = [e for e in self._acked if e[0] > acked_at - ACKED_KEEP_SECONDS]
                self._acked.append((acked_at, flush.backends))
                if flush.limits:
                    self._own_limits = [
                        e for e in self._own_limits if e[0] > acked_at - ACKED_KEEP_SECONDS
                    ]
                    self._own_limits.append((acked_at, flush.limits))
            self._transitions(flush.backends)
            self._unsent.pop(0)
        if not read:
            return None
        view = self._read_control()
        if active:
            view.rollup = self._rollups.maybe_recompute(self._client, view.rollup)
        return view

    def _transact(self, transaction: Transaction) -> None:
        """Send one batch until DynamoDB has it, retrying conflicts and throttling with
        jittered backoff. Always the same request: the token and the receipt make every
        resend harmless, whether or not an earlier attempt was applied."""
        for attempt in range(TRANSACT_ATTEMPTS):
            try:
                self._client.transact_write_items(
                    TransactItems=transaction.items, ClientRequestToken=transaction.token
                )
                return
            except Exception as exc:
                code = error_code(exc)
                if code == "TransactionCanceledException":
                    reasons = getattr(exc, "response", {}).get("CancellationReasons", [])
                    if receipt_found(reasons):
                        return  # applied by an earlier attempt whose answer was lost
                    codes = {str(reason.get("Code")) for reason in reasons}
                    if not codes & RETRYABLE_REASONS:
                        raise
                    self._count_retry(
                        "TransactionConflict" if "TransactionConflict" in codes else "Throttling"
                    )
                elif code in RETRYABLE_CODES:
                    self._count_retry(code)
                else:
                    raise
                if attempt + 1 == TRANSACT_ATTEMPTS:
                    raise
                time.sleep(
                    backoff_delay(attempt, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS, self._rng)
                )

    def _count_retry(self, code: str) -> None:
        retries = self.retries
        retries.by_code[code] = retries.by_code.get(code, 0) + 1
        if "Conflict" in code:
            retries.conflicts += 1
        elif "Throttl" in code or "Throughput" in code or code == "RequestLimitExceeded":
            retries.throttled += 1
        else:
            retries.other_retries += 1

    def _transitions(self, backends: Mapping[str, BackendDelta]) -> None:
        """The circuit transitions of one batch, each conditional on the state seen here."""
        for backend, delta in backends.items():
            if delta.closed_epoch and not delta.opened_at:
                # Close only the opening we saw; a newer one (another instance) stands.
                self._update_if(
                    backend,
                    "SET opened_at = :zero, trial_until = :zero",
                    "opened_at = :epoch",
                    {":zero": number(0), ":epoch": number(delta.closed_epoch)},
                )
            if delta.opened_at:
                self._update_if(
                    backend,
                    "SET opened_at = :now, trial_until = :zero",
                    "attribute_not_exists(opened_at) OR opened_at = :zero OR opened_at = :seen",
                    {
                        ":now": number(delta.opened_at),
                        ":zero": number(0),
                        ":seen": number(delta.reopened_epoch),
                    },
                )

    def _read_control(self) -> View:
        items = query_all(self._client, self.table, CONTROL_PK, consistent=True)
        controls: dict[str, dict[str, Value]] = {}
        rollup_item = None
        for item in items:
            sk = item["sk"]["S"]
            if sk == ROLLUP_SK:
                rollup_item = item
            else:
                controls[sk] = decode_item(item)
        return View(controls, decode_rollup(rollup_item))

    # -- the local view -------------------------------------------------------------------------

    def _adopt(self, view: View) -> None:
        """Take the shared view, then re-apply what happened here that it cannot include yet."""
        self._rollup = view.rollup
        for backend, control in view.controls.items():
            state = self._view(backend)
            opened_at = control.get("opened_at", 0.0)
            state.opened_at = float(opened_at) if isinstance(opened_at, (int, float)) else 0.0
            trial_until = control.get("trial_until", 0.0)
            if isinstance(trial_until, (int, float)):
                state.trial_until = max(state.trial_until, float(trial_until))
        rollup = view.rollup
        fresh_rollup = rollup.exists and rollup.at != self._adopted_rollup_at
        if fresh_rollup:
            self._adopted_rollup_at = rollup.at
            # Batches acknowledged before the rollup started summing are in it; those after
            # may be (committed just before, acknowledged just after): the view may count
            # such a batch twice until the next rollup. The table never does.
            self._acked = [(at, deltas) for at, deltas in self._acked if at >= rollup.at]
            for backend, totals in rollup.backends.items():
                self._adopt_totals(self._view(backend), totals)
        later = [deltas for _, deltas in self._acked] if fresh_rollup else []
        later += [flush.backends for flush in self._unsent if not flush.counted]
        later.append(self._pending)
        for deltas in later:
            for backend, delta in deltas.items():
                if fresh_rollup and backend in rollup.backends:
                    self._reapply_counts(self._view(backend), delta)
        for deltas in [flush.backends for flush in self._unsent] + [self._pending]:
            for backend, delta in deltas.items():
                self._reapply_transition(self._view(backend), delta)

    def _adopt_totals(self, state: BackendState, totals: BackendTotals) -> None:
        smart = self.settings.smart_ai
        state.confidence = min(
            1.0, max(smart.min_confidence, smart.initial_confidence + totals.conf)
        )
        state.requests = totals.requests
        state.failures = totals.failures
        state.consecutive_failures = totals.consecutive
        if totals.latency_ms is not None:
            state.latency_ms = totals.latency_ms
        if totals.last_failure_at >= state.last_failure_at and totals.last_error:
            with contextlib.suppress(ValueError):  # an error class this version does not know
                state.last_error = ErrorClass(totals.last_error)
        state.last_success_at = max(state.last_success_at, totals.last_success_at)
        state.last_failure_at = max(state.last_failure_at, totals.last_failure_at)
        state.last_request_at = max(
            state.last_request_at, state.last_success_at, state.last_failure_at
        )
        state.cooldown_until = max(state.cooldown_until, totals.cooldown_until)

    def _reapply_counts(self, state: BackendState, delta: BackendDelta) -> None:
        smart = self.settings.smart_ai
        state.confidence = min(1.0, max(smart.min_confidence, state.confidence + delta.confidence))
        state.requests += delta.requests
        state.failures += delta.failures
        if delta.reset_consecutive:
            state.consecutive_failures = delta.consecutive
        else:
            state.consecutive_failures += delta.consecutive
        if delta.latency_ms is not None:
            state.latency_ms = delta.latency_ms

    @staticmethod
    def _reapply_transition(state: BackendState, delta: BackendDelta) -> None:
        """A transition not yet written stands over the shared circuit state."""
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
        totals = f"{time.time() - self._rollup.at:.1f} s old" if self._rollup.exists else "not yet"
        return StoreStatus(
            self.kind,
            True,
            f"table {self.table}, {self.shards} shards; circuits synced {age}, "
            f"fleet statistics {totals}",
        )

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
    return error_code(exc) or type(exc).__name__


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
