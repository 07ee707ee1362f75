"""State stores: the interface and its implementations."""

from __future__ import annotations

import os

from ..config import Settings
from .memory import MemoryStateStore
from .store import StateStore, StoreStatus

__all__ = ["MemoryStateStore", "StateStore", "StoreStatus", "create_store"]


def create_store(settings: Settings) -> StateStore:
    """The store named by ``BERRY_STATE_STORE`` (or ``[settings] state_store``)."""
    kind = os.environ.get("BERRY_STATE_STORE") or settings.state_store
    if kind == "memory":
        return MemoryStateStore(settings)
    raise ValueError(f"unknown state store {kind!r} (BERRY_STATE_STORE): use 'memory'")
