"""The embedded default: all state in this process, nothing shared."""

from __future__ import annotations

from .ledger import REQUESTS
from .store import StateStore, StoreStatus, take_local_trial


class MemoryStateStore(StateStore):
    kind = "memory"

    async def acquire_trial(self, key: str, now: float, lease_seconds: float) -> bool:
        return take_local_trial(self.state(key), now, lease_seconds, self.settings)

    async def count_request(
        self, user_id: str, windows: list[tuple[int, int]], now: float
    ) -> float | None:
        wait = self.ledger.wait(REQUESTS, user_id, windows, now)
        if wait is None:
            self.ledger.add(REQUESTS, user_id, [window for window, _ in windows], 1, now)
        return wait

    def status(self) -> StoreStatus:
        return StoreStatus(self.kind, True, "in-process state, not shared between instances")
