"""The state store interface: SmartAI statistics, circuit states and rate-limit counters.

The hot path reads and updates the store's local view synchronously (no awaits for
statistics); a store that shares state (DynamoDB) syncs that view in the background. Only the
two operations that must be decided across instances are async: taking the half-open trial
and counting a rate-limited request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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


# Added to a computed wait so that a client waiting exactly that long is admitted, whatever
# the float rounding of timestamps.
WAIT_MARGIN_SECONDS = 0.001


def sliding_window_wait(
    previous: int, current: int, limit: int, window: int, now: float
) -> float | None:
    """The two-window approximation of a sliding window (as Cloudflare's rate limiter).

    The rate seen is the current window's count plus the previous window's count weighted by
    how much of it still overlaps the last ``window`` seconds; a request is admitted while
    that rate is below ``limit``. A burst at a window's edge is therefore not followed by
    another burst at the start of the next window (fixed windows would allow both: double the
    limit within a second), and steady demand gets ``limit`` requests per window. A client
    that spreads its retries over the next window can still reach up to twice the limit in
    the worst rolling minute, the known price of the approximation. Returns None if one more
    request fits, else the seconds until it would, assuming nothing else is admitted.
    """
    elapsed = now % window
    remaining = window - elapsed
    if previous * (1.0 - elapsed / window) + current < limit:
        return None
    if current < limit and previous:
        # It fits later in this window, once enough of the previous one has slid away.
        wait = (previous * (1.0 - elapsed / window) + current - limit) * window / previous
        if wait < remaining:
            return wait + WAIT_MARGIN_SECONDS
    # Not in this window: in the next one this window's count becomes the weighted previous.
    slide = (1.0 - limit / current) * window if current >= limit else 0.0
    return remaining + slide + WAIT_MARGIN_SECONDS
