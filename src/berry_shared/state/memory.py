"""The embedded default: all state in this process, nothing shared."""

from __future__ import annotations

from ..config import Settings
from .store import StateStore, StoreStatus, sliding_window_wait, take_local_trial


class MemoryStateStore(StateStore):
    kind = "memory"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # (user, window seconds) -> [window index, count in it, count in the one before]
        self._windows: dict[tuple[str, int], list[int]] = {}

    async def acquire_trial(self, key: str, now: float, lease_seconds: float) -> bool:
        return take_local_trial(self.state(key), now, lease_seconds, self.settings)

    def _window(self, user_id: str, window: int, now: float) -> list[int]:
        index = int(now // window)
        slot = self._windows.setdefault((user_id, window), [index, 0, 0])
        if slot[0] != index:
            # Roll forward; a gap of more than one window forgets the old count entirely.
            previous = slot[1] if slot[0] == index - 1 else 0
            slot[:] = [index, 0, previous]
        return slot

    async def count_request(
        self, user_id: str, windows: list[tuple[int, int]], now: float
    ) -> float | None:
        slots = [self._window(user_id, window, now) for window, _ in windows]
        waits = [
            wait
            for (window, limit), (_, current, previous) in zip(windows, slots, strict=True)
            if (wait := sliding_window_wait(previous, current, limit, window, now)) is not None
        ]
        if waits:
            return max(waits)
        for slot in slots:
            slot[1] += 1
        return None

    def status(self) -> StoreStatus:
        return StoreStatus(self.kind, True, "in-process state, not shared between instances")
