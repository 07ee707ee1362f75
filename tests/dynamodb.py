"""Pytest fixtures for DynamoDB Local (see local/dynamodb_local.py).

Import them into a conftest or a test module::

    from dynamodb import dynamodb_env, dynamodb_local, restartable_dynamodb  # noqa: F401

- ``dynamodb_local`` (session): one in-memory server shared by every test; tests isolate
  themselves by table name.
- ``dynamodb_env`` (function): points this process's env (Berry, boto3) at that server with a
  fresh table name; ``.env`` holds the same variables for subprocesses.
- ``restartable_dynamodb`` (function): a private server with its data in ``tmp_path``, to stop
  and ``restart()`` (same port, data kept) in outage tests without disturbing other tests.

``shared_totals`` and ``shared_requests`` read the shared counters straight from the table;
``eventually`` waits, bounded, for what instances see through the rollup.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "local") not in sys.path:
    sys.path.insert(0, str(ROOT / "local"))

from berry_shared.state.dynamo import make_client  # noqa: E402
from dynamodb_local import (  # noqa: E402
    DynamoDBLocal,
    DynamoDBLocalError,
    berry_env,
    scan_table,
)

__all__ = [
    "DynamoDBEnv",
    "DynamoDBLocal",
    "DynamoDBLocalError",
    "dynamodb_env",
    "dynamodb_local",
    "eventually",
    "restartable_dynamodb",
    "shared_requests",
    "shared_totals",
]


@dataclass(frozen=True)
class DynamoDBEnv:
    endpoint: str
    table: str
    env: dict[str, str]


# The session server is shared by reference count: if both a conftest and a test module import
# the fixture, pytest sees two session fixtures, and they must not start two servers or stop the
# server under each other.
_shared: DynamoDBLocal | None = None
_shared_users = 0


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    global _shared, _shared_users
    if _shared is None or not _shared.running:
        _shared = DynamoDBLocal().start()
    server = _shared
    _shared_users += 1
    try:
        yield server
    finally:
        _shared_users -= 1
        if _shared_users == 0:
            server.stop()
            _shared = None


@pytest.fixture
def dynamodb_env(
    dynamodb_local: DynamoDBLocal, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DynamoDBEnv]:
    table = f"berry-test-{uuid.uuid4().hex[:8]}"
    env = berry_env(dynamodb_local.endpoint, table)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield DynamoDBEnv(endpoint=dynamodb_local.endpoint, table=table, env=dict(env))


@pytest.fixture
def restartable_dynamodb(tmp_path: Path) -> Iterator[DynamoDBLocal]:
    server = DynamoDBLocal(db_path=tmp_path / "dynamodb-data").start()
    try:
        yield server
    finally:
        server.stop()


def shared_totals(endpoint: str, table: str, backend: str | None = None) -> dict[str, float]:
    """A backend's counters (every backend's: None) summed over the store's shard items, read
    straight from the table by its documented layout: pk="stats#<shard>", sk=<backend>. A scan
    needs no shard count, which a store in another process chose for itself."""
    totals: dict[str, float] = {}
    for item in scan_table(make_client(endpoint), table):
        if item["pk"]["S"].startswith("stats#") and backend in (None, item["sk"]["S"]):
            for name in ("requests", "failures", "conf"):
                if name in item:
                    totals[name] = totals.get(name, 0.0) + float(item[name]["N"])
    return totals


def shared_requests(endpoint: str, table: str, backend: str | None = None) -> int:
    """Requests counted in the table for ``backend`` (every backend: None)."""
    return int(shared_totals(endpoint, table, backend).get("requests", 0))


async def eventually(check: Callable[[], bool], within: float, step: float = 0.05) -> float:
    """Seconds until ``check()`` held; fails the test after ``within`` seconds."""
    started_at = time.monotonic()
    while not check():
        assert time.monotonic() - started_at < within, "not within the bound"
        await asyncio.sleep(step)
    return time.monotonic() - started_at
