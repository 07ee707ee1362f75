"""Berry's shared state at fleet scale: many containers, one DynamoDB table, faults injected.

    .venv/bin/python bench/scale_sim.py --containers 100 --seconds 30

Runs N independent DynamoStateStore instances in this process, as N containers would: each
has its own boto3 client and its own background loop (flushing and refreshing on its own
schedule) against DynamoDB Local, which the script starts (or ``--endpoint``). Each container
serves simulated chat traffic at ``--rate`` requests per second: users (some rate-limited)
spread over four backends of one model, one flaky, one that dies for the middle third of the
run (its circuit opens, trials run, it closes again); failures fail over once. Every answer
is also counted as per-user usage through the generic counter path (``add_counters``).

Faults: about ``--fault-rate`` of all DynamoDB calls fail, injected with botocore's
``before-send`` hook before they reach the server: throttling (``ThrottlingException``,
``ProvisionedThroughputExceededException``), transaction conflicts (a cancelled
``TransactWriteItems`` with ``TransactionConflict`` reasons) and, for batches, a lost answer
(the batch is really applied, then the client gets a 500). DynamoDB Local serialises
transactions, so real conflicts are rare there; the injected ones stand in for them.

Then the traffic stops, the fleet idles for ``--idle-seconds`` (its call pattern is measured
separately), every container drains and closes, and one full-table scan compares the shared
totals with what the simulated requests recorded. Calls are counted per kind and priced with
DynamoDB's billing rules (item sizes estimated from the payloads), which gives the cost model
printed before the last line, exactly:

    containers=N requests=R counted=C lost=L doubled=D conflicts=K throttled=T
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from berry_shared.backend_state import CircuitState, ErrorClass  # noqa: E402
from berry_shared.config import Settings  # noqa: E402
from berry_shared.state.dynamo import (  # noqa: E402
    DynamoStateStore,
    StoreTuning,
    make_client,
)
from berry_shared.state.shards import shards_for_fleet  # noqa: E402
from dynamodb_local import scan_table  # noqa: E402

# US East (N. Virginia), on-demand, since the 2024-11-01 price cut.
DOLLARS_PER_MILLION_WRITE_UNITS = 0.625
DOLLARS_PER_MILLION_READ_UNITS = 0.125

MODEL = "m"
# backend -> failure probability; "dying" fails everything during the middle third.
BACKENDS = {"steady:m": 0.01, "flaky:m": 0.10, "cheap:m": 0.02, "dying:m": 0.02}
DYING = "dying:m"
RATE_LIMIT = (60, 40)  # (window seconds, requests) for the rate-limited users
# Every fifth user has that limit, starting with the third busiest (users are Pareto-popular).
LIMITED_EVERY = 5
FAULTS_FOR_WRITES = ("throttle", "capacity", "conflict", "lost_answer")
FAULTS_FOR_OTHERS = ("throttle", "capacity")
SETTINGS = Settings(circuit_breaker_failure_threshold=5, circuit_breaker_timeout_seconds=4)


# -- DynamoDB billing rules (estimated from the payloads) --------------------------------------


def value_size(value: dict[str, Any]) -> int:
    """Bytes of one attribute value, as DynamoDB bills it (numbers: about 1 byte per 2 digits)."""
    if "S" in value:
        return len(value["S"].encode())
    if "N" in value:
        digits = len(value["N"].lstrip("-").replace(".", "").lstrip("0")) or 1
        return 1 + math.ceil(digits / 2)
    if "M" in value:
        return 3 + sum(len(k.encode()) + value_size(v) for k, v in value["M"].items())
    if "L" in value:
        return 3 + sum(1 + value_size(v) for v in value["L"])
    return 1


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def update_size(update: dict[str, Any]) -> int:
    """A write's item size: a put's item, or an update's key and the values it writes (items
    here stay under 1 KB, except the rollup, whose map is nearly all of it)."""
    if "Item" in update:
        return item_size(update["Item"])
    return item_size(update["Key"]) + sum(
        value_size(v) for v in update.get("ExpressionAttributeValues", {}).values()
    )


def write_units(size: int, transactional: bool) -> float:
    return max(1, math.ceil(size / 1024)) * (2 if transactional else 1)


def read_units(size: int, consistent: bool) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


# -- what each call is for --------------------------------------------------------------------


def is_batch(transact_items: list[dict[str, Any]]) -> bool:
    """A flush of counters (not the rate limits' all-windows-or-none transaction)."""
    keys = [next(iter(item.values())).get("Key", {}) for item in transact_items]
    return not all(k.get("pk", {}).get("S", "").startswith("rate#") for k in keys)


def call_kind(operation: str, params: dict[str, Any]) -> str:
    """Which part of the store made a call (the cost model scales each kind differently)."""
    if operation == "TransactWriteItems":
        return "batch" if is_batch(params.get("TransactItems", [])) else "rate limit"
    if operation == "Query":
        pk = params["ExpressionAttributeValues"][":pk"]["S"]
        if pk == "backend":
            return "refresh"
        return "rollup" if pk.startswith("stats#") else "counter read"
    key = params.get("Key", {})
    pk, sk = key.get("pk", {}).get("S", ""), key.get("sk", {}).get("S", "")
    if operation == "GetItem":
        return "rate limit" if pk.startswith("rate#") else "other"
    if operation == "UpdateItem":
        if pk.startswith("rate#"):
            return "rate limit"
        if pk == "backend":
            return "rollup" if sk == "~rollup" else "circuit"
        if pk.startswith("stats#"):
            return "rollup"  # the confidence correction
    return "setup"


def call_units(
    operation: str, params: dict[str, Any], parsed: dict[str, Any]
) -> tuple[float, float]:
    """(read units, write units) a successful (or condition-failed) call is billed."""
    error = parsed.get("Error", {}).get("Code")
    if operation == "TransactWriteItems":
        if error:
            return 0.0, 0.0
        sizes = [update_size(next(iter(item.values()))) for item in params["TransactItems"]]
        return 0.0, sum(write_units(size, True) for size in sizes)
    if operation == "UpdateItem":
        # A failed condition is billed like the write it refused.
        if error and error != "ConditionalCheckFailedException":
            return 0.0, 0.0
        return 0.0, write_units(update_size(params), False)
    if error:
        return 0.0, 0.0
    consistent = bool(params.get("ConsistentRead"))
    if operation == "Query":
        size = sum(item_size(item) for item in parsed.get("Items", []))
        return read_units(size, consistent), 0.0
    if operation == "GetItem":
        return read_units(item_size(parsed.get("Item", {})), consistent), 0.0
    return 0.0, 0.0


def batch_parts(transact_items: list[dict[str, Any]]) -> Counter[str]:
    parts: Counter[str] = Counter()
    for item in transact_items:
        write = next(iter(item.values()))
        pk = (write.get("Key") or write.get("Item", {}))["pk"]["S"]
        part = (
            "stats"
            if pk.startswith("stats#")
            else "receipt"
            if pk.startswith("receipt#")
            else "counters"
        )
        parts[part] += write_units(update_size(write), True)
    return parts


@dataclass
class Tally:
    """Calls, billed units and errors seen by one client (every attempt, retries included)."""

    calls: Counter[str] = field(default_factory=Counter)
    reads: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    # Write units of acknowledged batches by item: backend stats, other counters, receipts.
    batch_parts: Counter[str] = field(default_factory=Counter)
    rollups: int = 0

    def add(self, other: Tally) -> None:
        for mine, theirs in (
            (self.calls, other.calls),
            (self.reads, other.reads),
            (self.writes, other.writes),
            (self.errors, other.errors),
            (self.injected, other.injected),
            (self.batch_parts, other.batch_parts),
        ):
            mine.update(theirs)
        self.rollups += other.rollups

    def minus(self, other: Tally) -> Tally:
        diff = Tally()
        for name in ("calls", "reads", "writes", "errors", "injected", "batch_parts"):
            mine, theirs = getattr(self, name), getattr(other, name)
            getattr(diff, name).update({k: mine[k] - theirs.get(k, 0) for k in mine})
        diff.rollups = self.rollups - other.rollups
        return diff

    @property
    def conflicts(self) -> int:
        return self.errors["TransactionConflict"] + self.errors["TransactionConflictException"]

    @property
    def throttled(self) -> int:
        return (
            self.errors["ThrottlingException"]
            + self.errors["ProvisionedThroughputExceededException"]
            + self.errors["ThrottlingError"]
        )


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Any:
        yield self._data


def fabricated(url: str, status: int, body: dict[str, Any]) -> Any:
    from botocore.awsrequest import AWSResponse

    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "sim"}
    return AWSResponse(url, status, headers, _Body(json.dumps(body).encode()))


def error_body(code: str, **extra: Any) -> dict[str, Any]:
    return {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected", **extra}


class Instrumented:
    """botocore hooks on one client: inject faults before sending, count every attempt."""

    def __init__(self, client: Any, fault_rate: float, rng: random.Random) -> None:
        self.client = client
        self.fault_rate = fault_rate
        self.rng = rng
        self.tally = Tally()
        self._lock = threading.Lock()
        self._session: Any = None
        events = client.meta.events
        events.register("before-parameter-build.dynamodb", self._remember_params)
        events.register("before-send.dynamodb", self._maybe_fail)
        events.register("needs-retry.dynamodb", self._count_attempt)

    @staticmethod
    def _remember_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["sim_params"] = params

    def _maybe_fail(self, request: Any, event_name: str, **_: Any) -> Any:
        operation = event_name.rsplit(".", 1)[-1]
        if operation not in ("TransactWriteItems", "UpdateItem", "Query", "GetItem"):
            return None
        if self.rng.random() >= self.fault_rate:
            return None
        body = json.loads(request.body or b"{}")
        batch = operation == "TransactWriteItems" and is_batch(body["TransactItems"])
        fault = self.rng.choice(FAULTS_FOR_WRITES if batch else FAULTS_FOR_OTHERS)
        with self._lock:
            self.tally.injected[fault] += 1
        if fault == "throttle":
            return fabricated(request.url, 400, error_body("ThrottlingException"))
        if fault == "capacity":
            return fabricated(
                request.url, 400, error_body("ProvisionedThroughputExceededException")
            )
        if fault == "conflict":
            reasons = [{"Code": "TransactionConflict"} for _ in body["TransactItems"]]
            return fabricated(
                request.url,
                400,
                error_body("TransactionCanceledException", CancellationReasons=reasons),
            )
        # lost_answer: DynamoDB applies the batch; the answer never reaches the client.
        real = self._send(request)
        if real.status_code == 200:
            params = {"TransactItems": body["TransactItems"]}
            _, units = call_units("TransactWriteItems", params, {})
            with self._lock:
                self.tally.calls["batch"] += 1
                self.tally.writes["batch"] += units
        return fabricated(request.url, 500, error_body("InternalServerError"))

    def _send(self, request: Any) -> Any:
        from botocore.httpsession import URLLib3Session

        if self._session is None:
            self._session = URLLib3Session()
        return self._session.send(request)

    def _count_attempt(
        self,
        response: Any,
        operation: Any,
        request_dict: dict[str, Any],
        caught_exception: Any = None,
        **_: Any,
    ) -> None:
        try:
            self._count(response, operation, request_dict, caught_exception)
        except Exception as exc:  # a counting bug must show, not break the store under test
            with self._lock:
                self.tally.errors[f"sim bug {type(exc).__name__}"] += 1
        return None

    def _count(
        self, response: Any, operation: Any, request_dict: dict[str, Any], caught_exception: Any
    ) -> None:
        params = request_dict.get("context", {}).get("sim_params", {})
        kind = call_kind(operation.name, params)
        if kind == "setup":
            return
        with self._lock:
            self.tally.calls[kind] += 1
            if response is None:
                self.tally.errors[type(caught_exception).__name__] += 1
                return
            parsed = response[1]
            code = parsed.get("Error", {}).get("Code")
            if code == "TransactionCanceledException":
                codes = {r.get("Code") for r in parsed.get("CancellationReasons", [])}
                code = next(
                    (c for c in ("TransactionConflict", "ThrottlingError") if c in codes), code
                )
            if code:
                self.tally.errors[code] += 1
            reads, writes = call_units(operation.name, params, parsed)
            self.tally.reads[kind] += reads
            self.tally.writes[kind] += writes
            if kind == "batch" and writes:
                self.tally.batch_parts.update(batch_parts(params["TransactItems"]))
            if (
                operation.name == "UpdateItem"
                and not code
                and ":v" in params.get("ExpressionAttributeValues", {})
            ):
                self.tally.rollups += 1


# -- the simulated fleet ------------------------------------------------------------------------


@dataclass
class Truth:
    """What the simulated requests recorded: the totals the table must end up with."""

    backends: dict[str, Counter[str]] = field(default_factory=dict)
    usage: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    cost: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    refused: int = 0
    unserved: int = 0

    def backend(self, key: str) -> Counter[str]:
        return self.backends.setdefault(key, Counter())

    @property
    def attempts(self) -> int:
        return sum(c["requests"] for c in self.backends.values())


class Container:
    def __init__(
        self,
        index: int,
        store: DynamoStateStore,
        instrumented: Instrumented,
        truth: Truth,
        users: list[str],
        args: argparse.Namespace,
        started: float,
    ) -> None:
        self.index = index
        self.store = store
        self.instrumented = instrumented
        self.truth = truth
        self.users = users
        self.args = args
        self.rng = random.Random(args.seed * 1000 + index)
        self.started = started

    def failure_rate(self, backend: str, now: float) -> float:
        third = self.args.seconds / 3
        if backend == DYING and third <= now - self.started < 2 * third:
            return 1.0
        return BACKENDS[backend]

    async def serve(self, until: float) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(self.args.rate))
            if time.monotonic() >= until:
                return
            await self.one_request()

    async def one_request(self) -> None:
        store, rng = self.store, self.rng
        user = self.users[min(int(rng.paretovariate(1.2)) - 1, len(self.users) - 1)]
        now = time.time()
        if user.endswith("-limited") and await store.count_request(user, [RATE_LIMIT], now):
            self.truth.refused += 1
            return
        tried: set[str] = set()
        for _ in range(2):  # one failover, like the relay's first retry
            backend = await self.pick(now, tried)
            if backend is None:
                self.truth.unserved += 1
                return
            tried.add(backend)
            counts = self.truth.backend(backend)
            counts["requests"] += 1
            now = time.time()
            if rng.random() < self.failure_rate(backend, time.monotonic()):
                counts["failures"] += 1
                store.record_failure(backend, ErrorClass.SERVER, now)
                continue
            store.record_success(backend, rng.uniform(200, 2000), now)
            self.count_usage(user, now)
            return

    async def pick(self, now: float, tried: set[str]) -> str | None:
        """Like SmartAI: closed backends weighted by confidence; a half-open one needs the
        trial."""
        options = []
        for backend in BACKENDS:
            if backend in tried:
                continue
            state = self.store.state(backend)
            circuit = state.circuit(now, SETTINGS)
            if circuit is CircuitState.OPEN:
                continue
            options.append((backend, circuit, max(state.confidence, 0.01)))
        while options:
            chosen = self.rng.choices(options, weights=[w for _, _, w in options])[0]
            backend, circuit, _ = chosen
            if circuit is CircuitState.CLOSED or await self.store.acquire_trial(backend, now, 5):
                return backend
            options.remove(chosen)
        return None

    def count_usage(self, user: str, now: float) -> None:
        prompt, completion = self.rng.randint(10, 3000), self.rng.randint(1, 800)
        cost = (Decimal(prompt) * Decimal("0.15") + Decimal(completion) * Decimal("0.6")) / (
            Decimal(10) ** 6
        )
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        key = (f"usage#{user}", f"{day}#{MODEL}")
        self.store.add_counters(
            *key,
            add={
                "requests": 1,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cost_usd": float(cost),
            },
            ttl_seconds=400 * 86400,
        )
        usage = self.truth.usage.setdefault(key, Counter())
        usage["requests"] += 1
        usage["prompt_tokens"] += prompt
        usage["completion_tokens"] += completion
        self.truth.cost[key] = self.truth.cost.get(key, Decimal(0)) + Decimal(repr(float(cost)))


@dataclass
class Result:
    containers: int
    requests: int
    counted: int
    lost: int
    doubled: int
    conflicts: int
    throttled: int
    tokens_expected: int = 0
    tokens_counted: int = 0
    cost_error: float = 0.0
    undrained: int = 0
    refused: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    traffic: Tally = field(default_factory=Tally)
    idle: Tally = field(default_factory=Tally)
    seconds: float = 0.0
    idle_seconds: float = 0.0
    shards: int = 0
    rollup_seconds: float = 0.0
    rate: float = 0.0
    report: list[str] = field(default_factory=list)

    @property
    def last_line(self) -> str:
        return (
            f"containers={self.containers} requests={self.requests} counted={self.counted} "
            f"lost={self.lost} doubled={self.doubled} conflicts={self.conflicts} "
            f"throttled={self.throttled}"
        )


def compare(truth: Truth, items: list[dict[str, Any]], result: Result) -> None:
    """lost/doubled: events (requests, failures, answers counted as usage) missing or extra."""
    shared_backends: dict[str, Counter[str]] = {}
    shared_usage: dict[tuple[str, str], Counter[str]] = {}
    shared_cost: dict[tuple[str, str], Decimal] = {}
    for item in items:
        pk, sk = item["pk"]["S"], item["sk"]["S"]
        logical = pk.rsplit("#", 1)[0]
        numbers = {k: Decimal(v["N"]) for k, v in item.items() if "N" in v and k != "ttl"}
        if logical == "stats":
            counts = shared_backends.setdefault(sk, Counter())
            counts["requests"] += int(numbers.get("requests", 0))
            counts["failures"] += int(numbers.get("failures", 0))
        elif logical.startswith("usage#"):
            usage = shared_usage.setdefault((logical, sk), Counter())
            for name in ("requests", "prompt_tokens", "completion_tokens"):
                usage[name] += int(numbers.get(name, 0))
            shared_cost[(logical, sk)] = shared_cost.get((logical, sk), Decimal(0)) + numbers.get(
                "cost_usd", Decimal(0)
            )
    lost = doubled = 0
    pairs: list[tuple[Counter[str], Counter[str], tuple[str, ...]]] = []
    for backend in set(truth.backends) | set(shared_backends):
        pairs.append(
            (
                truth.backends.get(backend, Counter()),
                shared_backends.get(backend, Counter()),
                ("requests", "failures"),
            )
        )
    for key in set(truth.usage) | set(shared_usage):
        pairs.append(
            (truth.usage.get(key, Counter()), shared_usage.get(key, Counter()), ("requests",))
        )
    for expected, counted, names in pairs:
        for name in names:
            lost += max(0, expected[name] - counted[name])
            doubled += max(0, counted[name] - expected[name])
    result.lost, result.doubled = lost, doubled
    result.counted = sum(c["requests"] for c in shared_backends.values())
    result.tokens_expected = sum(
        u["prompt_tokens"] + u["completion_tokens"] for u in truth.usage.values()
    )
    result.tokens_counted = sum(
        u["prompt_tokens"] + u["completion_tokens"] for u in shared_usage.values()
    )
    result.cost_error = float(
        sum(
            abs(shared_cost.get(key, Decimal(0)) - truth.cost.get(key, Decimal(0)))
            for key in set(truth.cost) | set(shared_cost)
        )
    )


async def quiet(fleet: list[Container], within: float) -> None:
    """Until no container has anything unsent or owes the fleet a rollup (or ``within``)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(c.store.backlog or c.store._rollup_owed for c in fleet):
            return
        await asyncio.sleep(0.2)


async def simulate(
    containers: int,
    seconds: float,
    endpoint: str,
    *,
    rate: float = 1.0,
    fault_rate: float = 0.05,
    idle_seconds: float = 0.0,
    users: int = 40,
    shards: int | None = None,
    rollup_seconds: float = 3.0,
    seed: int = 1,
    store_class: type[DynamoStateStore] = DynamoStateStore,
    log: Callable[[str], None] = lambda line: None,
) -> Result:
    args = argparse.Namespace(seconds=seconds, rate=rate, seed=seed)
    tuning = StoreTuning(
        fleet_size=containers,
        shards=shards or shards_for_fleet(containers),
        rollup_seconds=rollup_seconds,
    )
    table = f"berry-sim-{uuid.uuid4().hex[:8]}"
    names = [f"user{i}" + ("-limited" if i % LIMITED_EVERY == 2 else "") for i in range(users)]
    truth = Truth()
    fleet: list[Container] = []
    log(f"{containers} containers, {tuning.shards} shards, table {table}")
    for index in range(containers):
        client = make_client(endpoint)
        instrumented = Instrumented(client, fault_rate, random.Random(seed * 7919 + index))
        store = store_class(SETTINGS, table, endpoint, client=client, tuning=tuning)
        fleet.append(Container(index, store, instrumented, truth, names, args, 0.0))
    for container in fleet:  # one at a time: the first creates the table
        await container.store.start()
    log("traffic")
    started = time.monotonic()
    for container in fleet:
        container.started = started
    await asyncio.gather(*(c.serve(started + seconds) for c in fleet))
    traffic_seconds = time.monotonic() - started
    # The traffic's tail (last flushes, the rollup that includes them) belongs to it.
    await quiet(fleet, 30.0)
    traffic = Tally()
    for container in fleet:
        traffic.add(container.instrumented.tally)
    idle = Tally()
    if idle_seconds:
        log("idle")
        await asyncio.sleep(idle_seconds)
        for container in fleet:
            idle.add(container.instrumented.tally)
        idle = idle.minus(traffic)
    log("drain")
    drained = await asyncio.gather(*(c.store.drain(30) for c in fleet))
    for container in fleet:
        await container.store.close()
    everything = Tally()
    for container in fleet:
        everything.add(container.instrumented.tally)
    result = Result(
        containers=containers,
        requests=truth.attempts,
        counted=0,
        lost=0,
        doubled=0,
        conflicts=everything.conflicts,
        throttled=everything.throttled,
        undrained=sum(1 for ok in drained if not ok),
        refused=truth.refused,
        injected=dict(everything.injected),
        traffic=traffic,
        idle=idle,
        seconds=traffic_seconds,
        idle_seconds=idle_seconds,
        shards=tuning.shards,
        rollup_seconds=rollup_seconds,
        rate=rate,
    )
    compare(truth, scan_table(make_client(endpoint), table), result)
    result.report = report(result)
    return result


# -- the cost model -----------------------------------------------------------------------------

PER_CONTAINER = ("refresh", "batch")  # scale with containers x time
PER_REQUEST = ("rate limit", "circuit", "counter read")  # scale with requests
# "rollup" scales with rollups per second (one every rollup period, fleet-wide) x shards.


def model(result: Result, containers: int) -> dict[str, float]:
    """Units per million chat requests and per idle hour at ``containers``, from the counts."""
    t, seconds = result.traffic, result.seconds
    requests = max(1, result.requests)
    rate = result.requests / seconds / result.containers  # per container and second
    per_container_second = {
        k: (t.reads[k] / seconds / result.containers, t.writes[k] / seconds / result.containers)
        for k in PER_CONTAINER
    }
    per_request = {k: (t.reads[k] / requests, t.writes[k] / requests) for k in PER_REQUEST}
    rollups = max(1, t.rollups)
    per_rollup_read = t.reads["rollup"] / rollups / result.shards  # per shard summed
    per_rollup_write = t.writes["rollup"] / rollups
    rollups_per_second = t.rollups / seconds
    shards = shards_for_fleet(containers)
    million_seconds = 1e6 / (rate * containers)  # how long the fleet takes for 1M requests
    reads = writes = 0.0
    for r, w in per_container_second.values():
        reads += r * containers * million_seconds
        writes += w * containers * million_seconds
    for r, w in per_request.values():
        reads += r * 1e6
        writes += w * 1e6
    reads += per_rollup_read * shards * rollups_per_second * million_seconds
    writes += per_rollup_write * rollups_per_second * million_seconds
    idle_reads = idle_writes = 0.0
    if result.idle_seconds:
        i = result.idle
        idle_reads = sum(i.reads.values()) / result.idle_seconds / result.containers
        idle_writes = sum(i.writes.values()) / result.idle_seconds / result.containers
    return {
        "reads": reads,
        "writes": writes,
        "dollars": (
            reads * DOLLARS_PER_MILLION_READ_UNITS + writes * DOLLARS_PER_MILLION_WRITE_UNITS
        )
        / 1e6,
        "idle_reads": idle_reads * containers * 3600,
        "idle_writes": idle_writes * containers * 3600,
        "idle_dollars": (
            idle_reads * DOLLARS_PER_MILLION_READ_UNITS
            + idle_writes * DOLLARS_PER_MILLION_WRITE_UNITS
        )
        * containers
        * 3600
        / 1e6,
        "shards": shards,
    }


def report(result: Result) -> list[str]:
    t = result.traffic
    lines = [
        f"traffic: {result.seconds:.1f} s, {result.requests} backend attempts "
        f"({result.requests / result.seconds:.0f}/s), {result.refused} refused by rate limits; "
        f"shards {result.shards}, rollup every {result.rollup_seconds:g} s",
        f"injected faults: {dict(sorted(result.injected.items()))}; "
        f"undrained containers: {result.undrained}",
        f"errors seen (every attempt): {dict(sorted(t.errors.items()))}",
        f"tokens expected {result.tokens_expected} counted {result.tokens_counted}; "
        f"cost difference {result.cost_error:.9f} USD",
        "",
        "| calls (traffic phase) | calls | per request | read units | write units |",
        "|---|---|---|---|---|",
    ]
    for kind in sorted(t.calls):
        lines.append(
            f"| {kind} | {t.calls[kind]} | {t.calls[kind] / max(1, result.requests):.3f} | "
            f"{t.reads[kind]:.1f} | {t.writes[kind]:.1f} |"
        )
    lines.append(f"rollups computed: {t.rollups}")
    parts = t.batch_parts
    lines.append(
        "batch write units per request: "
        + ", ".join(f"{k} {parts[k] / max(1, result.requests):.2f}" for k in sorted(parts))
        + f" (batches per request {t.calls['batch'] / max(1, result.requests):.2f})"
    )
    if result.idle_seconds:
        i = result.idle
        per_hour = 3600 / result.idle_seconds / result.containers
        lines.append(
            f"idle: {sum(i.calls.values()) * per_hour:.0f} calls, "
            f"{sum(i.reads.values()) * per_hour:.0f} read units, "
            f"{sum(i.writes.values()) * per_hour:.0f} write units per container-hour"
        )
    lines += [
        "",
        f"cost model at {result.requests / result.seconds / result.containers:.2f} requests/s "
        "per busy container (US East on-demand: $0.125 per million read units, "
        "$0.625 per million write units)",
        "",
        "| containers | shards | per 1M chat requests: read units | write units | USD "
        "| idle fleet per hour: read units | write units | USD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for containers in (10, 100, 1000):
        m = model(result, containers)
        lines.append(
            f"| {containers} | {m['shards']:.0f} | {m['reads']:,.0f} | {m['writes']:,.0f} | "
            f"{m['dollars']:.2f} | {m['idle_reads']:,.0f} | {m['idle_writes']:,.0f} | "
            f"{m['idle_dollars']:.4f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1.0, help="requests/s per container")
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--shards", type=int, default=None, help="default: from --containers")
    parser.add_argument("--rollup-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--endpoint", default=None, help="DynamoDB endpoint (default: start one)")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    server = None
    endpoint = args.endpoint
    if endpoint is None:
        from dynamodb_local import DynamoDBLocal

        server = DynamoDBLocal().start()
        endpoint = server.endpoint
    try:
        result = asyncio.run(
            simulate(
                args.containers,
                args.seconds,
                endpoint,
                rate=args.rate,
                fault_rate=args.fault_rate,
                idle_seconds=args.idle_seconds,
                users=args.users,
                shards=args.shards,
                rollup_seconds=args.rollup_seconds,
                seed=args.seed,
                log=log,
            )
        )
    finally:
        if server is not None:
            server.stop()
    print("\n".join(result.report))
    print(result.last_line)
    return 0 if result.lost == 0 and result.doubled == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
