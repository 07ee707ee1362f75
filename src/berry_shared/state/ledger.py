"""Per-user accounting in one process: usage per model and UTC day, sliding windows of
requests and tokens, and the month's spend.

The memory store keeps the truth here; a shared store keeps its local view here and adds
what other instances counted when it syncs. All methods are synchronous dictionary work: the
hot path never waits on storage for accounting.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..usage import UsageCounts
from .windows import WindowSlot, sliding_window_wait

REQUESTS = "requests"
TOKENS = "tokens"
# The request windows counted and reported per user (minute, hour, day), limited or not.
REQUEST_WINDOWS = (60, 3600, 86400)


@dataclass(slots=True)
class UsageLedger:
    # (user, model key, UTC day) -> counts
    usage: dict[tuple[str, str, str], UsageCounts] = field(default_factory=dict)
    # (user, "YYYY-MM") -> nano-dollars spent
    spend: dict[tuple[str, str], int] = field(default_factory=dict)
    # (kind, user, window seconds) -> slot
    windows: dict[tuple[str, str, int], WindowSlot] = field(default_factory=dict)

    def slot(self, kind: str, user_id: str, window: int, now: float) -> WindowSlot:
        index = int(now // window)
        slot = self.windows.get((kind, user_id, window))
        if slot is None:
            slot = self.windows[(kind, user_id, window)] = WindowSlot(index)
        return slot.at(index)

    def record(self, user_id: str, model_key: str, day: str, counts: UsageCounts) -> None:
        key = (user_id, model_key, day)
        total = self.usage.get(key)
        if total is None:
            self.usage[key] = total = UsageCounts()
        total.add(counts)

    def add_spend(self, user_id: str, month: str, cost_nano: int) -> None:
        self.spend[(user_id, month)] = self.spend.get((user_id, month), 0) + cost_nano

    def wait(
        self, kind: str, user_id: str, windows: Iterable[tuple[int, int]], now: float
    ) -> float | None:
        """Seconds until every ``(window, limit)`` has room again; None if all have now."""
        waits = [
            wait
            for window, limit in windows
            if (slot := self.slot(kind, user_id, window, now))
            and (wait := sliding_window_wait(slot.previous, slot.current, limit, window, now))
            is not None
        ]
        return max(waits) if waits else None

    def add(self, kind: str, user_id: str, windows: Iterable[int], amount: int, now: float) -> None:
        for window in windows:
            self.slot(kind, user_id, window, now).current += amount

    def rates(
        self, kind: str, user_id: str, windows: Iterable[int], now: float
    ) -> dict[int, float]:
        """The sliding-window count of each of ``windows``."""
        return {w: self.slot(kind, user_id, w, now).rate(w, now) for w in windows}

    def report(
        self, user_ids: Iterable[str] | None, days: Iterable[str]
    ) -> dict[str, dict[str, UsageCounts]]:
        """user -> model key -> counts summed over ``days``."""
        wanted_days = set(days)
        wanted_users = None if user_ids is None else set(user_ids)
        out: dict[str, dict[str, UsageCounts]] = {}
        for (user_id, model_key, day), counts in self.usage.items():
            if day not in wanted_days or (wanted_users is not None and user_id not in wanted_users):
                continue
            total = out.setdefault(user_id, {}).setdefault(model_key, UsageCounts())
            total.add(counts)
        return out
