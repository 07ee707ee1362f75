"""State stores: the interface and its implementations."""

from __future__ import annotations

import os

from ..config import Settings
from .memory import MemoryStateStore
from .store import StateStore, StoreStatus

__all__ = ["MemoryStateStore", "StateStore", "StoreStatus", "create_store"]

DEFAULT_TABLE = "berry-state"


def create_store(settings: Settings) -> StateStore:
    """The store named by ``BERRY_STATE_STORE`` (or ``[settings] state_store``)."""
    kind = os.environ.get("BERRY_STATE_STORE") or settings.state_store
    if kind == "memory":
        return MemoryStateStore(settings)
    if kind == "dynamodb":
        from .dynamo import DynamoStateStore  # boto3 is imported only when it is used

        return DynamoStateStore(
            settings,
            table=os.environ.get("BERRY_STATE_TABLE") or DEFAULT_TABLE,
            endpoint=os.environ.get("DYNAMODB_ENDPOINT") or None,
        )
    raise ValueError(f"unknown state store {kind!r} (BERRY_STATE_STORE): memory or dynamodb")
