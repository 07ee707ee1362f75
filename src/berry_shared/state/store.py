"""The state store interface: SmartAI statistics, circuit states and rate-limit counters.

The hot path reads and updates the store's local view synchronously (no awaits for
statistics); a store that shares state (DynamoDB) syncs that view in the background. Only the
two operations that must be decided across instances are async: taking the half-open trial
and counting a rate-limited request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass

from ..backend_state import (
    BackendState,
    CircuitState,
    ErrorClass,
    new_state,
    record_failure,
    record_latency_floor,
    record_success,
)
from ..config import Settings
from ..usage import UsageCounts
from .ledger import REQUESTS, TOKENS, UsageLedger

# Where sliding windows live; re-exported for the stores that import them from here.
from .windows import WAIT_MARGIN_SECONDS as WAIT_MARGIN_SECONDS
from .windows import sliding_window_wait as sliding_window_wait


@dataclass(frozen=True, slots=True)
class StoreStatus:
    kind: str
    healthy: bool
    detail: str = ""


class StateStore(ABC):
    kind = "abstract"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._states: dict[str, BackendState] = {}
        # Per-user accounting: the truth in memory, the local view in a shared store.
        self.ledger = UsageLedger()

    def state(self, key: str) -> BackendState:
        """The local view of one backend (created on first sight with initial confidence)."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = new_state(self.settings)
        return state

    def record_success(self, key: str, latency_ms: float, now: float) -> None:
        record_success(self.state(key), latency_ms, now, self.settings)

    def record_failure(
        self, key: str, error: ErrorClass, now: float, retry_after: float | None = None
    ) -> None:
        record_failure(self.state(key), error, now, self.settings, retry_after)

    def record_latency_floor(self, key: str, at_least_ms: float, now: float) -> None:
        """A cancelled attempt (a hedge race lost) took at least ``at_least_ms``."""
        record_latency_floor(self.state(key), at_least_ms)

    # -- per-user accounting (hot path: local view, synchronous) ----------------------------------

    def record_usage(self, user_id: str, model_key: str, day: str, counts: UsageCounts) -> None:
        """One answer's usage and cost, for ``user_id`` on ``model_key`` on UTC ``day``."""
        self.ledger.record(user_id, model_key, day, counts)

    def add_spend(self, user_id: str, month: str, cost_nano: int) -> None:
        """Spend of a user with a monthly budget, in the UTC ``month`` ("YYYY-MM")."""
        self.ledger.add_spend(user_id, month, cost_nano)

    def month_spend_nano(self, user_id: str, month: str) -> int:
        """Nano-dollars ``user_id`` spent in the UTC ``month`` ("YYYY-MM"), as known here."""
        return self.ledger.spend.get((user_id, month), 0)

    def token_wait(self, user_id: str, windows: list[tuple[int, int]], now: float) -> float | None:
        """Seconds until every ``(window, token limit)`` has room; None if all have room now."""
        return self.ledger.wait(TOKENS, user_id, windows, now)

    def add_tokens(self, user_id: str, windows: list[int], tokens: int, now: float) -> None:
        self.ledger.add(TOKENS, user_id, windows, tokens, now)

    def note_request(self, user_id: str, windows: list[int], now: float) -> None:
        """Count a request in windows that have no limit (limited ones count in
        ``count_request``), so every window can be reported."""
        self.ledger.add(REQUESTS, user_id, windows, 1, now)

    async def usage_report(
        self, user_ids: list[str] | None, days: list[str]
    ) -> dict[str, dict[str, UsageCounts]]:
        """user -> model key -> usage summed over the UTC ``days``."""
        return self.ledger.report(user_ids, days)

    async def request_rates(
        self, user_id: str, windows: list[int], limited: Collection[int], now: float
    ) -> dict[int, float | None]:
        """The sliding-window request count of ``user_id`` for each window (None: a window
        this store does not track). ``limited``: the windows with a limit."""
        rates: dict[int, float | None] = dict(self.ledger.rates(REQUESTS, user_id, windows, now))
        return rates

    async def token_rates(self, user_id: str, windows: list[int], now: float) -> dict[int, float]:
        """The sliding-window token count of ``user_id`` for each window."""
        return self.ledger.rates(TOKENS, user_id, windows, now)

    @abstractmethod
    async def acquire_trial(self, key: str, now: float, lease_seconds: float) -> bool:
        """Take the single half-open trial of a backend.

        True for a closed circuit (no trial needed); False if another request holds the
        trial, or if the circuit is open again (a trial failed since the request was planned).
        """

    @abstractmethod
    async def count_request(
        self, user_id: str, windows: list[tuple[int, int]], now: float
    ) -> float | None:
        """Count one request against every ``(window_seconds, limit)``.

        Returns None when the request is within all limits (and counts it), else the number
        of seconds after which it would be allowed (and does not count it).
        """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background work, if the store has any."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and stop background work."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Send everything recorded so far to shared storage, now."""

    async def settle(self) -> None:  # noqa: B027 - optional hook
        """Flush if the regular interval has passed. For hosts that freeze the process
        between requests (Lambda), where background timers do not run."""

    @abstractmethod
    def status(self) -> StoreStatus: ...


def take_local_trial(
    state: BackendState, now: float, lease_seconds: float, settings: Settings
) -> bool:
    """The trial rule on one process's view: closed needs none, open gets none, half-open
    gives one lease at a time."""
    circuit = state.circuit(now, settings)
    if circuit is not CircuitState.HALF_OPEN:
        return circuit is CircuitState.CLOSED
    if state.trial_until > now:
        return False
    state.trial_until = now + lease_seconds
    return True
